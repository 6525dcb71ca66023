"""The cleaning rules of :mod:`mmpipeline.clean.text` as Spark SQL expressions (no Python per row).

Each public function returns ``(fast, needs_python)``: ``fast`` is a JVM expression that equals the
scalar reference for every row where ``needs_python`` is false; the clean transforms send only the
other rows through the vectorised UDFs (:mod:`mmpipeline.clean.udfs`). The rows that need Python:

* text with any non-ASCII character (NFKC and Unicode-aware ``\\s``/``\\w``/casefold have no exact
  Spark SQL equivalent; 0.3% of the Home Depot titles, none of the fashion titles);
* text with an ``&`` that starts anything but a common entity in any case (``&amp;`` ``&lt;``
  ``&gt;`` ``&quot;`` ``&apos;`` ``&nbsp;`` ``&#39;`` and the typographic ``&ndash;`` ``&mdash;``
  ``&rsquo;`` ``&ldquo;`` ``&reg;`` ``&copy;`` ``&deg;`` ...): ``html.unescape`` knows 2,231 names,
  legacy spellings without ``;`` and numeric references; a bare ``&`` (``Bath & Body``) is fine;
* prices with a character outside printable ASCII (``€``, ``£``, control characters), or whose
  value is above ``clean.max_price`` (its message prints the number as Python does).

Everything else (tags, ``<style>``/``<script>`` elements, common entities, control characters,
whitespace, query normalisation, price parsing) runs inside the JVM: regular expressions, string
functions, and for entities one split at ``&`` with a lookup of each name.
Regexes are Java's; character classes are spelled out so they match exactly what Python's
``\\s``/``\\w``/``\\d`` match on ASCII text.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import TYPE_CHECKING

from mmpipeline.clean.text import CURRENCY_CODES, unescape

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from pyspark.sql import Column, DataFrame

# Python's \s on ASCII: [ \t\n\r\x0b\x0c\x1c-\x1f]
_S = r"\t\n\x0B\f\r\x1C-\x1F "
_W = r"A-Za-z0-9_"
_TAG = rf"<[{_S}]*/?[{_S}]*[A-Za-z!][^<>]*>"
_BLOCK = rf"(?is)<[{_S}]*(style|script)(?:[{_S}/][^<>]*)?>.*?<[{_S}]*/[{_S}]*\1[{_S}]*>"
_CTRL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]"
_WS = rf"[{_S}]+"
_QUERY_DROP = rf"[^{_W}{_S}./&+'\"-]"
_PUNCT = r"[./&+'\"-]"
_EDGE_PUNCT = rf"(?<![{_W}]){_PUNCT}+|{_PUNCT}+(?![{_W}])"
_NON_ASCII = r"[^\x00-\x7F]"
_COMMON_ENTITIES = ("amp", "lt", "gt", "quot", "apos", "nbsp", "#39", "#039", "#34", "#034", "#38", "#60", "#62",
                    # typographic entities of retailer HTML, kept as their (NFKC-stable) character
                    "ndash", "mdash", "lsquo", "rsquo", "ldquo", "rdquo", "bull", "middot", "copy", "reg", "deg",
                    "plusmn", "times", "laquo", "raquo", "#8211", "#8212", "#8216", "#8217", "#8220", "#8221")


def _kept_as_is(ch: str) -> bool:
    """A decoded non-ASCII character the JVM path may leave in the text: NFKC and case folding keep
    it, and it is neither a word, space nor control character (so no rule below treats it as one)."""
    import re
    import unicodedata

    from mmpipeline.clean.text import _CTRL

    return (len(ch) == 1 and unicodedata.normalize("NFKC", ch) == ch and ch.casefold() == ch == ch.lower()
            and ch.upper() == ch and not re.match(r"[\w\s]", ch) and not _CTRL.match(ch))


def _java_quote(s: str) -> str:
    return "".join("\\" + ch if not ch.isalnum() else ch for ch in s)


@lru_cache(maxsize=1)
def entity_table() -> tuple[tuple[str, str], ...]:
    """(spelling incl. ``&`` and ``;``, decoded text) for every case variant of the common entities
    that the reference decodes to one ASCII character, a no-break space or a character kept as it
    is (see :func:`_kept_as_is`; ``&Lt;`` is U+226A, ``&LT;`` is ``<``)."""
    out = []
    for name in _COMMON_ENTITIES:
        variants = {"".join(p) for p in itertools.product(*[(c.lower(), c.upper()) for c in name])}
        for v in sorted(variants):
            ref = f"&{v};"
            dec = unescape(ref)
            if dec == "\u00a0":
                dec = " "  # NFKC turns it into a space right after (and both are \s to the tag regex)
            if len(dec) == 1 and (ord(dec) < 128 or _kept_as_is(dec)) and dec != ref:
                out.append((ref, dec))
    return tuple(out)


@lru_cache(maxsize=1)
def _rare_amp() -> str:
    """An ``&`` that starts neither one of the common entities (any spelling :func:`_entity_names`
    decodes) nor nothing at all (html.unescape's regex does not start a reference before
    ``\\t\\n\\f <&;`` or at the end): such text goes to Python."""
    exact, folded = _entity_names()
    spellings = "|".join([*(_java_quote(n) for n in sorted(exact)), *(f"(?i:{_java_quote(n)})" for n in sorted(folded))])
    return rf"&(?!(?:{spellings});|[\t\n\f <&;]|\z)"


def text_needs_python(c: "Column") -> "Column":
    """True where the text has a non-ASCII character or an ``&`` that does not start a common entity.

    No regular expression on most rows: non-ASCII <=> more UTF-8 bytes than characters, and the
    entity regex runs only on text that has an ``&`` (a full regex scan of every row was ~11 us per
    row and column at 100k products)."""
    from pyspark.sql import functions as F

    non_ascii = F.octet_length(c) != F.length(c)
    rare = F.when(c.contains("&"), c.rlike(_rare_amp())).otherwise(F.lit(False))
    return F.coalesce(non_ascii | rare, F.lit(False))


def udf_jar():
    """The jar of :func:`clean_text_fast`'s rules and :func:`with_price_sql`'s parse as Java UDFs
    (:mod:`mmpipeline.clean.jvm`), generated from this module's patterns and entity tables and the
    reference's currency codes; None where it cannot be built."""
    from mmpipeline.clean import jvm

    exact, folded = _entity_names()
    return jvm.ensure_jar(jvm.render(_BLOCK, _TAG, exact, folded, CURRENCY_CODES))


def _let(value: "Column", body: "Callable[[Column], Column]") -> "Column":
    """``body(value)`` with ``value`` evaluated once. Spark SQL has no ``let``: a ``CASE WHEN`` that
    tests a value and returns it otherwise holds a copy of the value's whole expression in each
    branch, so nested steps grow the expression (and its generated code: 1 MB for the four product
    text columns) and evaluate inner steps again. A lambda over a one-element array binds the value
    once (measured on 300k titles: 8.4 vs 16.6 JVM CPU-s cold, 5.1 vs 7.8 warm)."""
    from pyspark.sql import functions as F

    return F.transform(F.array(value), body).getItem(0)


def _strip_tags(c: "Column") -> "Column":
    from pyspark.sql import functions as F

    return _let(c, lambda v: F.when(v.contains("<"), F.regexp_replace(F.regexp_replace(v, _BLOCK, " "), _TAG, " "))
                .otherwise(v))


@lru_cache(maxsize=1)
def _entity_names() -> tuple[dict[str, str], dict[str, str]]:
    """:func:`entity_table` as two small lookups (name without ``&``/``;`` -> decoded): ``exact``
    for names whose case matters (``&Lt;`` is U+226A, ``&LT;`` is ``<``) and ``folded`` (lower-case
    name) for names that decode alike in every case; 541 spellings -> about 45 entries."""
    by_low: dict[str, dict[str, str]] = {}
    for ent, dec in entity_table():
        by_low.setdefault(ent[1:-1].lower(), {})[ent[1:-1]] = dec
    exact, folded = {}, {}
    for low, spellings in by_low.items():
        all_cases = {"".join(p) for p in itertools.product(*[(ch.lower(), ch.upper()) for ch in low])}
        if set(spellings) == all_cases and len(set(spellings.values())) == 1:
            folded[low] = spellings[low]
        else:
            exact.update(spellings)
    return exact, folded


def _decode_entities(c: "Column") -> "Column":
    """Single-pass decoding of the common entities (``&amp;lt;`` -> ``&lt;``), any case as the
    reference decodes it: the text is split at ``&``; a piece whose text up to its first ``;`` is a
    name of :func:`entity_table` becomes the decoded character and the rest of the piece, any other
    piece gets its ``&`` back. One split instead of a regex pass per entity (23 passes, each
    converting the text to a Java string and back); a reference cannot contain ``&``, so splitting
    there finds exactly the references a left-to-right regex would."""
    from pyspark.sql import functions as F

    exact, folded = (F.create_map(*[F.lit(x) for kv in m.items() for x in kv]) for m in _entity_names())

    def piece(p: "Column", i: "Column") -> "Column":
        name = F.substring_index(p, ";", 1)
        dec = F.coalesce(F.try_element_at(exact, name), F.try_element_at(folded, F.lower(name)))
        decoded = F.when(p.contains(";"), F.concat(dec, F.call_function("substring", p, F.length(name) + 2)))
        return F.when(i == 0, p).otherwise(F.coalesce(decoded, F.concat(F.lit("&"), p)))

    return F.array_join(F.transform(F.split(c, "&"), piece), "")


# a run of ASCII whitespace / control characters that is not already one plain space: a control
# character (with whatever whitespace follows it) or a space followed by more whitespace
_SPACE_RUN = r"[\x00-\x1F\x7F][\x00-\x20\x7F]*|\x20[\x00-\x20\x7F]+"


def _finish_text(s: "Column") -> "Column":
    """Control characters -> space, whitespace runs -> one space, trimmed; empty -> null.

    One regular expression that matches only what changes (``translate`` of the 33 control and
    whitespace characters looks every character up in a hash map: 2.0-2.2 s vs 1.7-1.8 s for this
    expression over 1M titles in a warm JVM, same results)."""
    from pyspark.sql import functions as F

    return F.nullif(F.trim(F.regexp_replace(s, _SPACE_RUN, " ")), F.lit(""))


def _decode_pass(s: "Column") -> "Column":
    from pyspark.sql import functions as F

    return _let(s, lambda v: F.when(v.contains("&"), _strip_tags(_decode_entities(v))).otherwise(v))


def _query_from_text(t: "Column") -> "Column":
    from pyspark.sql import functions as F

    s = F.regexp_replace(F.regexp_replace(F.lower(t), _QUERY_DROP, " "), _EDGE_PUNCT, " ")
    return F.nullif(F.trim(F.regexp_replace(s, _WS, " ")), F.lit(""))


def clean_text_fast(c: "Column") -> "Column":
    """:func:`mmpipeline.clean.text.clean_text` for rows where :func:`text_needs_python` is false
    (one nested expression; on large frames prefer :func:`with_clean_columns`)."""
    return _finish_text(_decode_pass(_strip_tags(c)))


def normalize_query_fast(c: "Column") -> "Column":
    """:func:`mmpipeline.clean.text.normalize_query` for rows where :func:`text_needs_python` is false."""
    return _query_from_text(clean_text_fast(c))


def with_clean_columns(df: "DataFrame", specs: dict[str, tuple[str, str]],
                       extra: dict[str, tuple["Column", "Column", "Column"]] | None = None,
                       store: "Callable[[DataFrame], DataFrame] | None" = None) -> "DataFrame":
    """Add cleaned columns: ``{out: ("text" | "query", source column)}`` -> ``out`` = clean_text /
    normalize_query of the source, and ``extra`` ``{out: (needs_python, fast, udf)}`` columns.

    Every row gets the JVM cleaning (the Java UDF of :mod:`mmpipeline.clean.jvm` where the session has
    its jar, else the Spark SQL expressions here: the same results); the rows where any flag is set (a few percent) are split
    off and only they go through the vectorised UDFs (a UDF inside ``CASE WHEN`` would still be
    sent every row). Built in steps of intermediate columns so that Spark does not inline (and
    re-evaluate) a regex result that a later step uses more than once.

    ``store`` (e.g. the clean stage's ``materialize``): the frame with every JVM result and flag is
    computed once and stored before the split, so the source is read and the regexes run once per
    row; without it both halves of the split re-read the source (fine for small frames).
    """
    from functools import reduce

    from pyspark.sql import functions as F

    from mmpipeline.clean import udfs

    srcs = sorted({src for _, src in specs.values()})
    key = {src: f"__ct{i}" for i, src in enumerate(srcs)}
    extra = extra or {}
    flags = {f"{key[s]}_py": text_needs_python(F.col(s)) for s in srcs}
    flags |= {f"__cx{i}_py": flag for i, (flag, _, _) in enumerate(extra.values())}
    # one projection: without whole-stage code (see clean.stage.tag_once) Spark's projection evaluates
    # a subexpression used several times once per row (subexpression elimination), and no intermediate
    # row (with every bronze column) is written between the steps (half the JVM CPU of three projections)
    from mmpipeline.clean import jvm

    text = jvm.clean_text_jvm if jvm.available(df.sparkSession, udf_jar) else clean_text_fast  # the same results
    df = df.withColumns(flags | {f"{key[s]}_t": text(F.col(s)) for s in srcs})
    qsrcs = sorted({src for kind, src in specs.values() if kind == "query"})
    if qsrcs:
        df = df.withColumns({f"{key[s]}_q": _query_from_text(F.col(f"{key[s]}_t")) for s in qsrcs})
    fast, slow = {}, {}
    for out, (kind, src) in specs.items():
        py = F.col(f"{key[src]}_py")
        udf = udfs.clean_text_udf if kind == "text" else udfs.normalize_query_udf
        fast[out] = F.col(f"{key[src]}_t" if kind == "text" else f"{key[src]}_q")
        slow[out] = F.when(py, udf(F.col(src))).otherwise(fast[out])
    for i, (out, (_, fast_c, udf_c)) in enumerate(extra.items()):
        fast[out] = fast_c
        slow[out] = F.when(F.col(f"__cx{i}_py"), udf_c).otherwise(fast_c)
    any_py = reduce(lambda a, b: a | b, [F.col(c) for c in flags]) if flags else F.lit(False)
    df = df.withColumn("__ct_any", any_py)
    if store is not None:  # only the results are stored, not the intermediate steps
        df = store(df.drop(*[c for c in df.columns if c.startswith("__ct") and c.endswith(("_1", "_2"))]))
    out_df = df.where(~F.col("__ct_any")).withColumns(fast).unionByName(
        df.where(F.col("__ct_any")).withColumns(slow))
    return out_df.drop(*[c for c in out_df.columns if c.startswith(("__ct", "__cx"))])


# ------------------------------------------------------------------------------------------ prices

_PRINTABLE = r"^[\x20-\x7E]*\z"
_CODES = "|".join(sorted(CURRENCY_CODES))
_CODE = rf"(?<![A-Za-z])(?i:{_CODES})(?![A-Za-z])"
_NUMBER = r"\d[\d.,' ]*\d|\d"


def _py_repr(s: "Column") -> "Column":
    """Python's ``repr`` of a printable-ASCII string."""
    from pyspark.sql import functions as F

    bs = F.replace(s, F.lit("\\"), F.lit("\\\\"))
    dq = (F.instr(s, "'") > 0) & (F.instr(s, '"') == 0)
    return F.when(dq, F.concat(F.lit('"'), bs, F.lit('"'))).otherwise(
        F.concat(F.lit("'"), F.replace(bs, F.lit("'"), F.lit("\\'")), F.lit("'")))


def price_needs_python(c: "Column") -> "Column":
    """Prices the fast path does not take at all (non-printable or non-ASCII text)."""
    from pyspark.sql import functions as F

    return F.coalesce(~c.rlike(_PRINTABLE), F.lit(False))


def with_price_fast(df: "DataFrame", src: str, max_price: float, out: str = "_price_fast") -> "DataFrame":
    """Add ``out``: :func:`mmpipeline.clean.text.parse_price` of column ``src`` as a struct<price,
    currency, error, detail, py>; ``py`` is true where the row must be parsed by the reference
    instead (see module doc). The Java UDF of :mod:`mmpipeline.clean.jvm` where the session has its
    jar (one call per row instead of some 30 expressions: about 3 s less of a cold 1M-product run),
    else :func:`with_price_sql`; the same results."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import jvm

    if jvm.available(df.sparkSession, udf_jar):
        return df.withColumn(out, jvm.parse_price_jvm(F.col(src), max_price))
    return with_price_sql(df, src, max_price, out)


def with_price_sql(df: "DataFrame", src: str, max_price: float, out: str = "_price_fast") -> "DataFrame":
    """:func:`with_price_fast` as Spark SQL expressions. Plain string functions where they suffice.

    Two projections: the first computes the five facts the verdict needs (one number? negative?
    text left over? value, currency) as columns of one projection, so Spark's subexpression
    elimination evaluates each regular expression they share once per row; the second builds the
    verdict from them. (A projection per intermediate step copied the whole bronze row each time:
    at 300k products the 8 projections took 17.9 JVM CPU-s cold / 7.4 warm, these 2 take 12.9 / 5.1.)"""
    from pyspark.sql import functions as F

    c = F.col(src)
    p = f"__{out}_"
    t = F.trim(c)
    rest0 = F.replace(t, F.lit("$"), F.lit(" "))
    code = F.upper(F.regexp_extract(rest0, f"({_CODE})", 1))
    has_code = code != ""
    rest = F.when(has_code, F.regexp_replace(rest0, rf"(?s)^(.*?){_CODE}", "$1 ")).otherwise(rest0)
    num = F.regexp_extract(rest, f"({_NUMBER})", 1)
    # the number is the first match, so the text before it is everything before its first occurrence
    before_raw = F.call_function("substring_index", rest, num, F.lit(1))
    after_raw = F.call_function("substring", rest, F.length(before_raw) + F.length(num) + F.lit(1))
    digits = "0123456789"
    before, after = F.trim(before_raw), F.trim(after_raw)
    n = F.replace(F.replace(num, F.lit("'"), F.lit("")), F.lit(" "), F.lit(""))
    has_c, has_d = F.instr(n, ",") > 0, F.instr(n, ".") > 0
    no_dots, no_commas = F.replace(n, F.lit("."), F.lit("")), F.replace(n, F.lit(","), F.lit(""))
    rev = F.reverse(n)
    comma_last = F.instr(rev, ",") < F.instr(rev, ".")
    n2 = (F.when(has_c & has_d, F.when(comma_last, F.replace(no_dots, F.lit(","), F.lit("."))).otherwise(no_commas))
          .when(has_c, F.when(n.rlike(r"^\d{1,3}(,\d{3})+$"), no_commas).otherwise(F.replace(n, F.lit(","), F.lit("."))))
          .when(has_d & n.rlike(r"^\d{1,3}(\.\d{3}){2,}$"), no_dots).otherwise(n))
    df = df.withColumns({
        p + "t": t,
        p + "cur": F.when(has_code, code).otherwise(F.when(t.contains("$"), F.lit("USD"))),
        # exactly one number <=> a number, and no digit after it (any digit would start another match)
        p + "one": (num != "") & (F.length(F.translate(after_raw, digits, "")) == F.length(after_raw)),
        p + "neg": before.endswith("-") | (before.endswith("(") & after.startswith(")")),
        p + "left": F.translate(F.concat(before, after), " ()+-\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", ""),
        p + "v": n2.try_cast("double")})
    t, value, currency, left = F.col(p + "t"), F.col(p + "v"), F.col(p + "cur"), F.col(p + "left")
    rt = _py_repr(t)
    null_s = F.lit(None).cast("string")
    null_d = F.lit(None).cast("double")

    def res(price, cur, err, detail, py=F.lit(False)):
        return F.struct(price.alias("price"), cur.alias("currency"), err.alias("error"), detail.alias("detail"),
                        py.alias("py"))

    invalid = F.lit("invalid_price")
    parsed = (
        F.when(c.isNull() | (t == ""), res(null_d, null_s, null_s, null_s))
        .when(price_needs_python(c), res(null_d, null_s, null_s, null_s, F.lit(True)))
        .when(~F.col(p + "one"), res(null_d, currency, invalid, F.concat(F.lit("no single number in price "), rt)))
        .when(left != "", res(null_d, currency, invalid, F.concat(
            F.lit("unexpected text "), _py_repr(left), F.lit(" in price "), rt)))
        .when(value.isNull(), res(null_d, currency, invalid, F.concat(F.lit("cannot read the number in price "), rt)))
        .when(F.col(p + "neg"), res(-value, currency, F.lit("negative_price"), F.concat(F.lit("negative price "), rt)))
        .when(value > F.lit(float(max_price)), res(null_d, null_s, null_s, null_s, F.lit(True)))
        .otherwise(res(value, currency, null_s, null_s))
    )
    return df.withColumn(out, parsed).drop(*[x for x in df.columns if x.startswith(p)])
