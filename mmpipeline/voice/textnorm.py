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


# ------------------------------------------------------------------- word error rate normaliser, v2
#
# Whisper's own evaluation normalises both sides with ``EnglishTextNormalizer`` (numbers spoken ->
# digits, spellings, contractions) before WER. :func:`wer_form_v2` follows that approach for search
# queries, on top of :func:`wer_form`:
#
# 1. ``slash`` spoken between words is the ``/`` that was read aloud; letter/letter slashes
#    (``a/c``, ``up/down``) become two words, number fractions stay one token (``3/4``);
# 2. spelled fractions -> digits: ``one half`` / ``a half`` -> ``1/2``, ``three quarter`` -> ``3/4``,
#    ``five eighths`` -> ``5/8``, ``2 and a half`` -> ``2 1/2``, ``2.5`` -> ``2 1/2``, ``half inch``
#    -> ``1/2 inch`` (only before a unit);
# 3. spoken numbers -> digits with Whisper's ``EnglishNumberNormalizer`` (transformers' copy:
#    ``twenty four`` -> ``24``, ``one hundred`` -> ``100``, ``one oh one`` -> ``101``), without its
#    ``1`` -> ``one`` readability step, so ``one gang`` = ``1 gang``;
# 4. ``N by M`` -> ``N x M`` (``2 by 4`` = ``2x4``);
# 5. units to one spelling: inch/inches -> in, foot/feet -> ft, gallon(s) -> gal, pound(s)/lbs -> lb,
#    ounce(s) -> oz, and after a number watt(s) -> w, volt(s) -> v, amp(s) -> amp, degree(s) -> deg;
# 6. closed compounds (optional ``compounds``, e.g. from :func:`compound_lexicon` over the catalog's
#    titles): ``bath tub`` -> ``bathtub`` when the catalog writes ``bathtub``.
#
# Applied to reference and hypothesis alike, so it changes only how a word is *written*, never which
# word was recognised. The homophone mapping of :func:`written_form` (``for`` -> 4) is recognition,
# not normalisation: it is not part of this.

_SLASH_WORD = re.compile(r"\b(\S+) slash (?=\S)")
_ALPHA_SLASH = re.compile(r"(?<=[a-z])/|/(?=[a-z])")
_FRAC = {"half": "2", "halves": "2", "third": "3", "thirds": "3", "quarter": "4", "quarters": "4",
         "fourth": "4", "fourths": "4", "eighth": "8", "eighths": "8", "sixteenth": "16", "sixteenths": "16"}
_NUM_W = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
          "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
          "fifteen": "15"}
_NUMTOK = r"(\d+|" + "|".join(_NUM_W) + r")"
_FRACTOK = "(" + "|".join(sorted(_FRAC, key=len, reverse=True)) + ")"
_UNITS_ANY = {"inch": "in", "inches": "in", "foot": "ft", "feet": "ft", "gallon": "gal", "gallons": "gal",
              "pound": "lb", "pounds": "lb", "lbs": "lb", "ounce": "oz", "ounces": "oz"}
_UNITS_AFTER_NUM = {"watt": "w", "watts": "w", "volt": "v", "volts": "v", "amps": "amp", "degree": "deg",
                    "degrees": "deg"}
_UNIT_WORDS = "in|inch|inches|ft|foot|feet|gal|gallon|gallons|lb|lbs|pound|pounds|oz|ounce|ounces"
_DECIMAL_FRAC = {"5": "1/2", "25": "1/4", "75": "3/4"}
_number_normalizer = None


def _num_normalizer():
    global _number_normalizer
    if _number_normalizer is None:
        from transformers.models.whisper.english_normalizer import EnglishNumberNormalizer

        _number_normalizer = EnglishNumberNormalizer()
    return _number_normalizer


def _n(tok: str) -> str:
    return _NUM_W.get(tok, tok)


def compound_lexicon(texts, min_count: int = 2, min_part: int = 3) -> set[str]:
    """Closed compounds the texts (e.g. catalog titles) write as one word, both of whose parts they
    also use as words (``bathtub`` = ``bath`` + ``tub``), each seen in at least ``min_count`` texts."""
    from collections import Counter

    cnt: Counter = Counter()
    for t in texts:
        cnt.update(set(wer_form(t).split()))
    known = {w for w, c in cnt.items() if c >= min_count and w.isalpha()}
    out = set()
    for w in known:
        if len(w) < 2 * min_part:
            continue
        for i in range(min_part, len(w) - min_part + 1):
            if w[:i] in known and w[i:] in known:
                out.add(w)
                break
    return out


def wer_form_v2(text: str | None, compounds: set[str] | None = None) -> str:
    """The v2 form both reference and hypothesis take before word error rate (see the notes above)."""
    s = wer_form(text)
    if not s:
        return s
    s = _SLASH_WORD.sub(lambda m: m.group(1) + "/", s)
    s = re.sub(r"\b([a-z]+|\d+)/([a-z]+|\d+)\b", lambda m: f"{_n(m.group(1))}/{_n(m.group(2))}", s)
    s = _ALPHA_SLASH.sub(" ", s)
    # spelled fractions
    s = re.sub(rf"\b{_NUMTOK} and (?:a|one) {_FRACTOK}\b", lambda m: f"{_n(m.group(1))} 1/{_FRAC[m.group(2)]}", s)
    s = re.sub(rf"\b(?:a|one) {_FRACTOK}\b", lambda m: f"1/{_FRAC[m.group(1)]}", s)
    s = re.sub(rf"\b{_NUMTOK} {_FRACTOK}\b",
               lambda m: f"{_n(m.group(1))}/{_FRAC[m.group(2)]}" if int(_n(m.group(1))) < int(_FRAC[m.group(2)])
               else m.group(0), s)
    s = re.sub(rf"\bhalf (?=(?:{_UNIT_WORDS})\b)", "1/2 ", s)
    s = re.sub(r"\b(\d+)\.(5|25|75)\b", lambda m: f"{m.group(1)} {_DECIMAL_FRAC[m.group(2)]}", s)
    # spoken numbers (Whisper's number normaliser, without its 1 -> one step)
    nn = _num_normalizer()
    s = " ".join(w for w in nn.process_words(nn.preprocess(s).split()) if w is not None)
    s = re.sub(r"\b(\d+(?:/\d+)?) by (?=\d)", r"\1 x ", s)
    toks = s.split()
    out = []
    for i, w in enumerate(toks):
        w = _UNITS_ANY.get(w, w)
        if i and toks[i - 1][:1].isdigit():
            w = _UNITS_AFTER_NUM.get(w, w)
        out.append(w)
    if compounds:
        joined = []
        i = 0
        while i < len(out):
            if i + 1 < len(out) and out[i] + out[i + 1] in compounds:
                joined.append(out[i] + out[i + 1])
                i += 2
            else:
                joined.append(out[i])
                i += 1
        out = joined
    return " ".join(out)
