"""The Spark SQL cleaning expressions equal the scalar reference functions, row for row.

Compared on the real sample titles and queries (Home Depot, fashion) and on seeded hostile strings
(tags, style/script blocks, entities in every case, control characters, non-ASCII, price formats).
The share of rows sent to Python is checked too: the fast path must carry the real data.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest

from mmpipeline.clean.text import clean_text, normalize_query, parse_price

_PIECES = [
    "<", ">", "&", "&amp;", "&AMP;", "&Amp;", "&aMp;", "&lt;", "&LT;", "&Lt;", "&gt;", "&Gt;", "&quot;", "&QUOT;",
    "&apos;", "&nbsp;", "&Nbsp;", "&NBSP;", "&#39;", "&#039;", "&#x27;", "&#0;", "&#128;", "&ampere", "&amp",
    "&Rsquo;", "&rsquo;", "&copy", "&;", "& ", "&#", "&&", "<b>", "</b>", "< b >", "<!-- c -->", "<br/>", "<1>",
    "<style>", "</style>", "<STYLE type=x>", "</Style >", "<script>", "</script>", "<scripts>", "<style/>",
    "p{color:red}", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f", " ", "  ", "é", "ﬁ",
    "\u00a0", "\u200b", "½", "ß", "İ", "\u212a", "Ǆ", "™", "$", "€", "£", "USD", "eur", "Usd", "usdx", "abc",
    "1", "12", "1,299", ".50", "1.234.567", "12,5", ",", ".", "'", "\"", "-", "(", ")", "+", "/", "\\", "_",
    "x", "it's", "2x4", "1/2", "A", "z", "?", "!", "#", ";", "Navy-Blue",
    "&ndash;", "&NDASH;", "&Mdash;", "&reg;", "&REG;", "&copy;", "&Lt;", "&LT;", "&hellip;", "&trade;", "&#8211;",
    "&amp;ndash;", "&rsquo", "&middot;", "&times;",
]


def hostile_strings(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append("".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 10))))
    return out


def price_strings(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    fmts = ["${:,.2f}", "{:.2f} USD", "USD {:,.2f}", "{:.2f}", "{:,.2f} eur", "({:.2f})", "-{:.2f}", "{:.0f}",
            "  ${:.2f}  ", "{:,.3f}", "CAD{:.2f}", "{:.2f}$", "$ -{:.2f}", "{:.2f} each", "2 for ${:.0f}"]
    out = []
    for _ in range(n):
        v = rng.choice([rng.uniform(0, 100), rng.uniform(0, 1e7), float(rng.randint(0, 5000))])
        s = rng.choice(fmts).format(v)
        if rng.random() < 0.2:
            s = s.replace(".", ",") if rng.random() < 0.5 else s.replace(",", "'")
        if rng.random() < 0.15:
            s = rng.choice(_PIECES) + s + rng.choice(_PIECES)
        out.append(s)
    return out + ["", "  ", "1.2.3", "1..2", "9" * 400, "1e5", "NaN", "0", "-0", "1 000 000", "1.000.000,50",
                  "12 345", "USD EUR 5", "5 usd usd", "'5'", '"5"', "\\5", "5\t", "12,50 EUR", "(12.00)"]


def _compare(spark, values: list[str], which: str):
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql
    from mmpipeline.clean import transforms as T

    df = spark.createDataFrame(pd.DataFrame({"i": range(len(values)), "s": values}), "i long, s string")
    if which == "price":
        df = sql.with_price_sql(df, "s", 1e6, "f")  # the SQL path (with_price_fast may take the Java one)
        out = df.select("i", T.parse_price_col("s", 1e6, F.col("f")).alias("r"), F.col("f.py").alias("py"))
        rows = sorted(out.collect(), key=lambda r: r["i"])
        got = [tuple(r["r"]) if r["r"] is not None else (None,) * 4 for r in rows]
        want = [parse_price(v, 1e6) for v in values]
    else:
        fn = {"text": (T.clean_text_col, clean_text), "query": (T.normalize_query_col, normalize_query)}[which]
        out = df.select("i", fn[0]("s").alias("r"), sql.text_needs_python(F.col("s")).alias("py"))
        rows = sorted(out.collect(), key=lambda r: r["i"])
        got = [r["r"] for r in rows]
        want = [fn[1](v) for v in values]
    bad = [(values[k], got[k], want[k]) for k in range(len(values)) if got[k] != want[k]]
    py_share = sum(bool(r["py"]) for r in rows) / max(1, len(rows))
    return bad, py_share


@pytest.mark.parametrize("which", ["text", "query"])
def test_sql_text_equals_reference_on_hostile_strings(spark, which):
    bad, _ = _compare(spark, hostile_strings(3000), which)
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"


def test_sql_fast_path_alone_equals_reference(spark):
    """The JVM expressions by themselves (no UDF fallback) on every row they claim."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql

    values = hostile_strings(3000, seed=3)
    df = spark.createDataFrame(pd.DataFrame({"i": range(len(values)), "s": values}), "i long, s string")
    rows = df.select("i", sql.text_needs_python(F.col("s")).alias("py"), sql.clean_text_fast(F.col("s")).alias("t"),
                     sql.normalize_query_fast(F.col("s")).alias("q")).collect()
    fast = [r for r in rows if not r["py"]]
    assert len(fast) > 300  # the generator reaches the fast path often
    bad = [(values[r["i"]], r["t"], clean_text(values[r["i"]])) for r in fast if r["t"] != clean_text(values[r["i"]])]
    bad += [(values[r["i"]], r["q"], normalize_query(values[r["i"]])) for r in fast
            if r["q"] != normalize_query(values[r["i"]])]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"


def test_sql_price_equals_reference(spark):
    bad, share = _compare(spark, price_strings(3000), "price")
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"
    assert share < 0.5


def test_sql_equals_reference_on_real_samples_mostly_without_python(spark, shared_datasets):
    hd = pd.read_csv(shared_datasets / "homedepot" / "relevance.csv", encoding="latin-1", dtype=str)
    fa = pd.read_csv(shared_datasets / "fashion" / "products.csv", dtype=str)
    titles = pd.concat([hd["product_title"].drop_duplicates(), fa["title"]]).dropna().tolist()
    queries = hd["search_term"].drop_duplicates().dropna().tolist()
    for values, which in [(titles, "text"), (queries, "query"), (titles[:5000], "query")]:
        bad, share = _compare(spark, values, which)
        assert not bad, f"{which}: {len(bad)} mismatches, e.g. {bad[:5]}"
        assert share < 0.02, f"{which}: {share:.1%} of the real rows went through Python"


@pytest.mark.parametrize("raw,expected", [
    ("<style>.a{color:red}</style>Linen Shirt", "Linen Shirt"),
    ("<STYLE type='text/css'>p {}</Style >Dress<script>var x = 1;</SCRIPT>", "Dress"),
    ("&lt;script&gt;alert(1)&lt;/script&gt;Mug", "Mug"),
    ("A&Nbsp;B &Amp; C", "A B & C"),
    ("Men&Rsquo;s", "Men\u2019s"),
    ("&Lt; stays U+226A", "\u226a stays U+226A"),
])
def test_style_script_and_entity_case_fixed(spark, raw, expected):
    from mmpipeline.clean import transforms as T

    assert clean_text(raw) == expected
    got = spark.createDataFrame([(raw,)], "s string").select(T.clean_text_col("s")).first()[0]
    assert got == expected


def test_split_route_equals_reference(spark):
    """The stage's path (with_clean_columns: JVM rows + UDF rows split and re-united) row for row."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql
    from mmpipeline.clean import transforms as T
    from mmpipeline.clean.stage import materialize, release

    values = hostile_strings(1500, seed=5) + [None]
    prices = price_strings(1500, seed=6)[: len(values)]
    prices += [None] * (len(values) - len(prices))
    df = spark.createDataFrame(pd.DataFrame({"i": range(len(values)), "s": values, "price": prices}),
                               "i long, s string, price string")
    df = sql.with_price_fast(df, "price", 1e6, "_price_fast")
    stored = []

    def store(d):  # as the stage does (clean.stage.tag_once): computed once, before the split
        stored.append(materialize(d))
        return stored[-1]

    out = sql.with_clean_columns(df, {"t": ("text", "s"), "q": ("query", "s")},
                                 extra={"p": T._price_route(1e6)}, store=store)
    # the source is read once: both halves of the split read the stored frame, not the source
    plan = out._jdf.queryExecution().optimizedPlan().toString()
    assert len(stored) == 1 and "LocalRelation" not in plan and "LogicalRDD" in plan
    rows = {r["i"]: r for r in out.select("i", "t", "q", F.col("p").alias("p")).collect()}
    assert len(rows) == len(values)  # every row exactly once through the split
    bad = [(values[i], rows[i]["t"], clean_text(values[i])) for i in range(len(values)) if rows[i]["t"] != clean_text(values[i])]
    bad += [(values[i], rows[i]["q"]) for i in range(len(values)) if rows[i]["q"] != normalize_query(values[i])]
    bad += [(prices[i], tuple(rows[i]["p"])) for i in range(len(values))
            if tuple(rows[i]["p"]) != parse_price(prices[i], 1e6)]
    release(stored[0])
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"


def test_typographic_entities_stay_on_the_jvm(spark):
    """Retailer HTML's dashes, quotes and marks decode in SQL (no Python), exactly as the reference."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql

    values = ["Drill &ndash; 18V", "Bob&rsquo;s &Ldquo;Best&rdquo;", "Brand&reg; Saw &mdash; 7&deg;",
              "&COPY; 2024 &bull; 3 &times; 4", "&amp;ndash; literal", "x &#8211; y", "&Lt; &LT; &lt;b&gt;",
              "a&middot;b &laquo;c&raquo; &plusmn;1"]
    df = spark.createDataFrame(pd.DataFrame({"s": values}), "s string")
    rows = df.select("s", sql.text_needs_python(F.col("s")).alias("py"), sql.clean_text_fast(F.col("s")).alias("t"),
                     sql.normalize_query_fast(F.col("s")).alias("q")).collect()
    assert [r["s"] for r in rows if r["py"]] == []
    assert [(r["t"], r["q"]) for r in rows] == [(clean_text(v), normalize_query(v)) for v in values]
    # NFKC changes these (hellip -> '...', trade -> 'TM'): they stay with the reference
    py = df.select(sql.text_needs_python(F.lit("a &hellip; b &trade;")).alias("py")).first()["py"]
    assert py


def _java_or_skip(spark):
    from mmpipeline.clean import jvm, sql

    if jvm._javac() is None and sql.udf_jar() is None:
        pytest.skip("no javac here: the Java UDF cannot be built (the Spark SQL path is used)")
    assert sql.udf_jar() is not None, "javac is present but the Java UDF did not compile"
    assert jvm.available(spark), "the session was built without the UDF's jar"
    return jvm


@pytest.mark.parametrize("seed", [3, 13])
def test_java_udf_equals_reference_and_sql_on_hostile_strings(spark, seed):
    """The Java text cleaning (the stage's JVM path when the jar is there) on every row it claims:
    equal to the scalar reference and to the Spark SQL expression, null and empty included."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql

    jvm = _java_or_skip(spark)
    values = hostile_strings(3000, seed=seed) + [None, "", " \t\x00 ", "&", "<b></b>", "&amp;lt;b&amp;gt;x"]
    df = spark.createDataFrame(pd.DataFrame({"i": range(len(values)), "s": values}), "i long, s string")
    rows = df.select("i", sql.text_needs_python(F.col("s")).alias("py"), jvm.clean_text_jvm(F.col("s")).alias("j"),
                     sql.clean_text_fast(F.col("s")).alias("t")).collect()
    fast = [r for r in rows if not r["py"]]
    assert len(fast) > 300
    bad = [(values[r["i"]], r["j"], clean_text(values[r["i"]]), r["t"]) for r in fast
           if r["j"] != clean_text(values[r["i"]]) or r["j"] != r["t"]]
    assert not bad, f"{len(bad)} mismatches (value, java, reference, sql), e.g. {bad[:5]}"


def test_java_udf_equals_reference_on_real_samples(spark, shared_datasets):
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql

    jvm = _java_or_skip(spark)
    hd = pd.read_csv(shared_datasets / "homedepot" / "relevance.csv", encoding="latin-1", dtype=str)
    fa = pd.read_csv(shared_datasets / "fashion" / "products.csv", dtype=str)
    values = pd.concat([hd["product_title"].drop_duplicates(), fa["title"], hd["search_term"].drop_duplicates()]
                       ).dropna().tolist()
    df = spark.createDataFrame(pd.DataFrame({"i": range(len(values)), "s": values}), "i long, s string")
    rows = df.select("i", sql.text_needs_python(F.col("s")).alias("py"), jvm.clean_text_jvm(F.col("s")).alias("j")).collect()
    fast = [r for r in rows if not r["py"]]
    assert len(fast) > 0.98 * len(rows)
    bad = [(values[r["i"]], r["j"]) for r in fast if r["j"] != clean_text(values[r["i"]])]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:5]}"


@pytest.mark.parametrize("seed", [11, 17])
def test_java_price_equals_reference_and_sql(spark, seed):
    """The Java price parser: on every row it claims (py false) the reference's (price, currency,
    error, detail); on every row, the same struct as the Spark SQL parse, py flag included."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql

    jvm = _java_or_skip(spark)
    values = price_strings(3000, seed=seed) + [None, "\t5", "5\x00", "€5", "５", "$1,299.00", "USD 2,000,000",
                                                "(5) usd", "-$3", "$ (4.50)", "4.50 usd each", "1'234.50 CHF"]
    df = spark.createDataFrame(pd.DataFrame({"i": range(len(values)), "s": values}), "i long, s string")
    df = sql.with_price_sql(df, "s", 1e6, "q").withColumn("j", jvm.parse_price_jvm(F.col("s"), 1e6))
    rows = sorted(df.select("i", "j", "q").collect(), key=lambda r: r["i"])
    claimed = [r for r in rows if not r["j"]["py"]]
    assert len(claimed) > 0.5 * len(rows)
    bad = [(values[r["i"]], tuple(r["j"])[:4], parse_price(values[r["i"]], 1e6)) for r in claimed
           if tuple(r["j"])[:4] != parse_price(values[r["i"]], 1e6)]
    assert not bad, f"{len(bad)} mismatches (value, java, reference), e.g. {bad[:5]}"
    diff = [(values[r["i"]], tuple(r["j"]), tuple(r["q"])) for r in rows if tuple(r["j"]) != tuple(r["q"])]
    assert not diff, f"{len(diff)} rows where Java and SQL differ (value, java, sql), e.g. {diff[:5]}"


def test_stage_path_uses_java_udf_and_falls_back_to_sql(spark, monkeypatch):
    """with_clean_columns puts the Java UDF in the plan when the session has it, the SQL expressions
    with MMP_JAVA_UDF=0, and both give the reference's result."""
    from mmpipeline.clean import sql

    jvm = _java_or_skip(spark)
    values = ["<b>Oak</b>&nbsp;Desk", "  Lamp\t\x00 ", None]
    df = spark.createDataFrame(pd.DataFrame({"i": range(len(values)), "s": values}), "i long, s string")
    for env, in_plan in [("1", True), ("0", False)]:
        monkeypatch.setenv("MMP_JAVA_UDF", env)
        out = sql.with_clean_columns(df, {"t": ("text", "s")})
        plan = out._jdf.queryExecution().analyzed().toString()
        assert (jvm.UDF_NAME in plan) is in_plan, plan[:400]
        got = {r["i"]: r["t"] for r in out.collect()}
        assert [got[i] for i in range(len(values))] == [clean_text(v) for v in values]
        prices = spark.createDataFrame(pd.DataFrame({"p": ["$1,299.00", "12,50 EUR", "-3", None]}), "p string")
        parsed = sql.with_price_fast(prices, "p", 1e6, "f")
        assert (jvm.PRICE_UDF in parsed._jdf.queryExecution().analyzed().toString()) is in_plan
        assert [tuple(r["f"])[:4] for r in parsed.collect()] == [parse_price(v, 1e6) for v in prices.toPandas()["p"]]


def test_java_udf_reaches_a_session_started_by_spark_submit(tmp_path):
    """Airflow runs the stages through spark-submit, whose JVM starts without the jar: the first
    with_clean_columns adds it (ADD JAR) and the stage's plan uses the Java UDF, with the reference's rows."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyspark

    from mmpipeline.clean import jvm, sql

    if jvm._javac() is None and sql.udf_jar() is None:
        pytest.skip("no javac here: the Java UDF cannot be built")
    script = tmp_path / "check.py"
    script.write_text(
        "import pandas as pd\n"
        "from mmpipeline.spark import get_spark\n"
        "from mmpipeline.clean import sql, jvm\n"
        "spark = get_spark(None)\n"
        "df = spark.createDataFrame(pd.DataFrame({'s': ['<b>Oak</b>&nbsp;Desk', ' x\\t', None]}))\n"
        "out = sql.with_clean_columns(df, {'t': ('text', 's')})\n"
        "print('PLAN', jvm.UDF_NAME in out._jdf.queryExecution().analyzed().toString())\n"
        "p = sql.with_price_fast(spark.createDataFrame(pd.DataFrame({'p': ['USD 1,299.00']})), 'p', 1e6, 'f')\n"
        "print('PRICE', jvm.PRICE_UDF in p._jdf.queryExecution().analyzed().toString(), tuple(p.first()['f']))\n"
        "print('ROWS', sorted(str(r['t']) for r in out.collect()))\n")
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    r = subprocess.run([str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false", str(script)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "PLAN True" in r.stdout and "ROWS ['None', 'Oak Desk', 'x']" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "PRICE True (1299.0, 'USD', None, None, False)" in r.stdout, r.stdout + r.stderr[-2000:]
