"""Text normalisation for spoken queries.

* :func:`written_form` -- inverse text normalisation of a recognised query, the shop's way of writing
  sizes: Whisper writes what it hears (``3 slash 4``, ``2 by 4``, ``free slash for``) and a search
  box holds ``3/4`` and ``2x4``. Only number patterns around ``slash`` / ``by`` / ``x`` are rewritten,
  with the number homophones Whisper produces there (``for`` -> 4, ``to`` -> 2, ``free`` -> 3...).
  Part of recognition: the result is the query text that is searched.
* :func:`wer_form` -- the normalisation both sides get before word error rate is computed:
  ``query_norm`` (NFKC, case-folded, stray punctuation dropped), plus the punctuation that
  ``query_norm`` keeps inside words: hyphens and apostrophes (``6-inch`` = ``6 inch``,
  ``nature's`` = ``natures``), and the space between a number and its unit (``8ft`` = ``8 ft``).
  Symmetric, so it neither helps nor hurts either side; it only stops counting spelling
  conventions as recognition errors.
"""

from __future__ import annotations

import re

from mmpipeline.clean.text import normalize_query

_NUM_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "won": "1", "two": "2", "to": "2", "too": "2", "three": "3", "free": "3",
    "tree": "3", "four": "4", "for": "4", "fore": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "ate": "8", "nine": "9", "ten": "10", "twelve": "12", "sixteen": "16",
}
_NUM = r"(?:\d+(?:\.\d+)?|" + "|".join(sorted(_NUM_WORDS, key=len, reverse=True)) + r")"
# "3 slash 4", "free slash for", "a slash c" -> 3/4, 3/4, a/c
_SLASH = re.compile(rf"\b({_NUM}|[a-z])\s+slash\s+({_NUM}|[a-z])\b")
# "2 by 4", "two by four", "4 x 8" -> 2x4, 2x4, 4x8 (both sides numeric: "by" between words stays)
_BY = re.compile(rf"\b(\d+(?:[/x]\d+)*|{_NUM})\s+(?:by|x|times)\s+(\d+(?:/\d+)?|{_NUM})\b")
_XJOIN = re.compile(r"\b(\d+(?:/\d+)?)\s*x\s*(?=\d)")
_DIGIT_ALPHA = re.compile(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)")
_INNER = re.compile(r"['\u2019`-]")


def _num(tok: str) -> str:
    return _NUM_WORDS.get(tok, tok)


def written_form(text: str | None) -> str:
    """A normalised recognised query with spoken size patterns written the shop's way."""
    s = normalize_query(text) or ""
    if not s:
        return s
    s = _SLASH.sub(lambda m: f"{_num(m.group(1))}/{_num(m.group(2))}", s)
    for _ in range(3):  # chains: 4 by 8 by 1 -> 4x8x1
        t = _BY.sub(lambda m: f"{_num(m.group(1))}x{_num(m.group(2))}", s)
        if t == s:
            break
        s = t
    s = _XJOIN.sub(lambda m: f"{m.group(1)}x", s)
    return s


def wer_form(text: str | None) -> str:
    """The form both reference and hypothesis take before word error rate (see the module doc)."""
    s = normalize_query(text) or ""
    s = _INNER.sub(lambda m: "" if m.group(0) != "-" else " ", s)
    s = _DIGIT_ALPHA.sub(" ", s)
    return " ".join(s.split())
