"""Scalar cleaning functions (plain Python, no Spark): text, queries, prices.

These are the reference. The Spark clean stage evaluates the same rules as Spark SQL expressions
(:mod:`mmpipeline.clean.sql`) and sends only the rows those cannot handle exactly (non-ASCII text,
rare HTML entities, out-of-range prices) through vectorised UDFs over these functions; a test
compares both on the real samples and on hostile strings. The pandas baseline of the clean
benchmark applies these functions directly.
"""

from __future__ import annotations

import html
import re
import unicodedata

_TAG = re.compile(r"<\s*/?\s*[A-Za-z!][^<>]*>")
# <style>/<script> elements: their text is CSS/JS, not product text (dropped with the element)
_BLOCK = re.compile(r"<\s*(style|script)(?:[\s/][^<>]*)?>.*?<\s*/\s*\1\s*>", re.IGNORECASE | re.DOTALL)
# html.unescape's own pattern: every character reference it would look at
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_CTRL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\ufeff]")
_WS = re.compile(r"\s+")
_QUERY_DROP = re.compile(r"[^\w\s./&+'\"-]")
_EDGE_PUNCT = re.compile(r"(?<!\w)[./&+'\"-]+|[./&+'\"-]+(?!\w)")


def _charref(m: re.Match) -> str:
    ref = m.group(0)
    out = html.unescape(ref)
    if out == ref and not ref.startswith("&#"):  # not an entity as written: try it in lower case
        low = html.unescape(ref.lower())
        if low != ref.lower():
            return low
    return out


def unescape(s: str) -> str:
    """``html.unescape``, plus entities written in another case (``&Nbsp;``, ``&Rsquo;``, ``&AMP;``):
    an exact HTML5 name wins (``&Lt;`` is U+226A), otherwise its lower-case spelling is tried."""
    return _CHARREF.sub(_charref, s)


def _strip_tags(s: str) -> str:
    return _TAG.sub(" ", _BLOCK.sub(" ", s))


def clean_text(s: str | None) -> str | None:
    """NFKC, HTML tags and entities stripped (``<style>``/``<script>`` elements with their content),
    control characters removed, whitespace collapsed.

    Returns None for missing or empty-after-cleaning text.
    """
    if s is None:
        return None
    if not isinstance(s, str):
        s = str(s)
    s = _strip_tags(s)
    if "&" in s:
        s = unescape(s)
        s = _strip_tags(s)  # entity-encoded tags (&lt;b&gt;) become tags after unescaping
    s = unicodedata.normalize("NFKC", s)
    s = _CTRL.sub(" ", s)
    s = _WS.sub(" ", s).strip()
    return s or None


def normalize_query(s: str | None) -> str | None:
    """A query as a key: cleaned text, case-folded, stray punctuation removed (keeps 1/2, 2x4, 3.5, it's)."""
    s = clean_text(s)
    if s is None:
        return None
    s = s.casefold()
    s = _QUERY_DROP.sub(" ", s)
    s = _EDGE_PUNCT.sub(" ", s)
    s = _WS.sub(" ", s).strip()
    return s or None


CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR", "₩": "KRW", "₽": "RUB"}
CURRENCY_CODES = {"USD", "EUR", "GBP", "JPY", "INR", "CAD", "AUD", "NZD", "CHF", "CNY", "SEK", "NOK", "DKK",
                  "PLN", "CZK", "HUF", "KRW", "RUB", "BRL", "MXN", "ZAR", "SGD", "HKD", "TRY", "AED"}
_NUMBER = re.compile(r"\d[\d.,'\u00a0 ]*\d|\d")
_CODE = re.compile(r"(?<![A-Za-z])([A-Za-z]{3})(?![A-Za-z])")
_THOUSANDS_COMMA = re.compile(r"^\d{1,3}(,\d{3})+$")
_THOUSANDS_DOT = re.compile(r"^\d{1,3}(\.\d{3}){2,}$")


def _to_number(n: str) -> float | None:
    n = n.replace("'", "").replace("\u00a0", "").replace(" ", "")
    if "," in n and "." in n:  # the last separator is the decimal one
        if n.rfind(",") > n.rfind("."):
            n = n.replace(".", "").replace(",", ".")
        else:
            n = n.replace(",", "")
    elif "," in n:
        n = n.replace(",", "") if _THOUSANDS_COMMA.match(n) else n.replace(",", ".")
    elif _THOUSANDS_DOT.match(n):
        n = n.replace(".", "")
    try:
        return float(n)
    except ValueError:
        return None


def parse_price(s: str | None, max_price: float = 1e6) -> tuple[float | None, str | None, str | None, str | None]:
    """``"$1,299.00"`` -> (1299.0, "USD", None, None); ``"12,50 EUR"`` -> (12.5, "EUR", None, None).

    Returns ``(value, currency, error_code, detail)``; error codes: ``invalid_price`` (no number,
    or words besides a currency), ``negative_price``, ``price_out_of_range``. Missing -> all None.
    """
    if s is None:
        return None, None, None, None
    t = unicodedata.normalize("NFKC", str(s)).strip()
    if not t:
        return None, None, None, None
    currency = None
    rest = t
    for sym, code in CURRENCY_SYMBOLS.items():
        if sym in rest:
            currency = code
            rest = rest.replace(sym, " ")
    for m in _CODE.finditer(rest):
        code = m.group(1).upper()
        if code in CURRENCY_CODES:
            currency = code
            rest = rest[:m.start()] + " " + rest[m.end():]
            break
    nums = list(_NUMBER.finditer(rest))
    if len(nums) != 1:
        return None, currency, "invalid_price", f"no single number in price {t!r}"
    m = nums[0]
    before, after = rest[:m.start()].strip(), rest[m.end():].strip()
    negative = before.endswith(("-", "\u2212")) or (before.endswith("(") and after.startswith(")"))
    leftover = re.sub(r"[\s()\-\u2212+]", "", before + after)
    if leftover:
        return None, currency, "invalid_price", f"unexpected text {leftover!r} in price {t!r}"
    value = _to_number(m.group(0))
    if value is None:
        return None, currency, "invalid_price", f"cannot read the number in price {t!r}"
    if negative:
        return -value, currency, "negative_price", f"negative price {t!r}"
    if value > max_price:
        return value, currency, "price_out_of_range", f"price {value} above the configured maximum {max_price}"
    return value, currency, None, None
