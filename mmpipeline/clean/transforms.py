"""Pure Spark transforms of the clean stage: bronze frame in, tagged / silver / quarantine frames out.

Each ``tag_*`` function types and normalises one entity's bronze rows and tags every row with an
``_outcome``: ``kept`` (becomes a silver row), ``folded`` (an identical repeat or an aggregated row
whose content is in silver: counted as kept) or ``quarantined`` (with ``_reason`` and ``_detail``).
So rows in = kept + folded + quarantined, by construction. ``*_silver`` and :func:`quarantine_rows`
select the two outputs. Nothing here reads or writes the lake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    import pandas as pd
    from pyspark.sql import Column, DataFrame

    from mmpipeline.config import CleanConfig

KEPT, FOLDED, QUARANTINED = "kept", "folded", "quarantined"
EVENT_TYPES = ["impression", "click", "add_to_cart", "purchase"]
_META = ["_row_id", "_raw", "_source_file", "_batch_id", "_corrupt_record"]

def _udf(name: str):
    from mmpipeline.clean import udfs

    return getattr(udfs, f"{name}_udf")


def _as_col(c: "Column | str") -> "Column":
    from pyspark.sql import functions as F

    return F.col(c) if isinstance(c, str) else c


def clean_text_col(c: "Column | str") -> "Column":
    """:func:`~mmpipeline.clean.text.clean_text` as a Spark SQL expression; only rows that need
    Python (see :mod:`mmpipeline.clean.sql`) reach the UDF (the others send it a null)."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql

    col = _as_col(c)
    py = sql.text_needs_python(col)
    return F.when(py, _udf("clean_text")(F.when(py, col))).otherwise(sql.clean_text_fast(col))


def normalize_query_col(c: "Column | str") -> "Column":
    from pyspark.sql import functions as F

    from mmpipeline.clean import sql

    col = _as_col(c)
    py = sql.text_needs_python(col)
    return F.when(py, _udf("normalize_query")(F.when(py, col))).otherwise(sql.normalize_query_fast(col))


def parse_price_col(c: "Column | str", max_price: float, fast: "Column") -> "Column":
    """:func:`~mmpipeline.clean.text.parse_price` as struct<price, currency, error, detail>: the SQL
    parse ``fast`` (a column added by :func:`mmpipeline.clean.sql.with_price_fast`), and the
    reference UDF only for the rows it flags."""
    from pyspark.sql import functions as F

    col = _as_col(c)
    py = fast["py"]  # set for the text the fast parse does not take, too (sql.price_needs_python)
    out = _udf("parse_price")(F.when(py, col), F.lit(float(max_price)))
    return F.when(py, out).otherwise(_fast_parse(fast))


def _fast_parse(fast: "Column") -> "Column":
    """struct<price, currency, error, detail> of a ``with_price_fast`` column (its ``py`` flag left out)."""
    from pyspark.sql import functions as F

    return F.struct(*[fast[f].alias(f) for f in ("price", "currency", "error", "detail")])


def _price_route(max_price: float) -> tuple["Column", "Column", "Column"]:
    """(needs Python, SQL parse, reference UDF) of the ``price`` column, given ``_price_fast``."""
    from pyspark.sql import functions as F

    fast = F.col("_price_fast")
    flag = fast["py"]  # set for the text the fast parse does not take, too (sql.price_needs_python)
    return flag, _fast_parse(fast), _udf("parse_price")(F.col("price"), F.lit(float(max_price)))


def _with_clean_query(bronze: "DataFrame", store: "Callable[[DataFrame], DataFrame] | None" = None) -> "DataFrame":
    from mmpipeline.clean.sql import with_clean_columns

    return with_clean_columns(bronze, {"_ct_query": ("text", "query"), "_cq_query": ("query", "query")}, store=store)


def _blank_to_null(c: "Column") -> "Column":
    from pyspark.sql import functions as F

    t = F.trim(c)
    return F.when(t == "", None).otherwise(t)


def parse_timestamp(c: "Column") -> "Column":
    """ISO-8601 (with or without zone), common date/time layouts, or epoch seconds/milliseconds."""
    from pyspark.sql import functions as F

    s = F.trim(c)
    num = F.expr("try_cast(NULL AS double)")
    num = F.when(s.rlike(r"^\d{9,13}(\.\d+)?$"), s.cast("double"))
    epoch = F.when(num > 1e11, F.timestamp_millis(num.cast("long"))).otherwise(F.timestamp_seconds(num.cast("long")))
    fmts = ["yyyy-MM-dd HH:mm:ss", "yyyy/MM/dd HH:mm:ss", "yyyy-MM-dd", "yyyy/MM/dd", "dd/MM/yyyy", "MM/dd/yyyy HH:mm"]
    return F.coalesce(F.when(num.isNotNull(), epoch), F.try_to_timestamp(s),
                      *[F.try_to_timestamp(s, F.lit(f)) for f in fmts])


def _try_double(c: "Column | str") -> "Column":
    from pyspark.sql import functions as F

    col = F.col(c) if isinstance(c, str) else c
    return F.regexp_replace(F.trim(col), ",", "").try_cast("double")


def _meta_cols(df: "DataFrame") -> list["Column"]:
    from pyspark.sql import functions as F

    return [F.col(c) if c in df.columns else F.lit(None).cast("string" if c != "_row_id" else "long").alias(c)
            for c in _META]


def _reason_chain(checks: list[tuple["Column", str, "Column | str"]]) -> tuple["Column", "Column"]:
    """First failing check wins: [(condition, reason, detail)] -> (reason column, detail column)."""
    from pyspark.sql import functions as F

    reason = detail = None
    for cond, code, det in checks:
        d = F.lit(det) if isinstance(det, str) else det
        reason = F.when(cond, F.lit(code)) if reason is None else reason.when(cond, F.lit(code))
        detail = F.when(cond, d) if detail is None else detail.when(cond, d)
    return reason, detail


def text_hash(*cols: "Column | str") -> "Column":
    from pyspark.sql import functions as F

    return F.sha2(F.concat_ws("\u001f", *[F.coalesce(F.col(c) if isinstance(c, str) else c, F.lit("")) for c in cols]), 256)


def query_id_col(query_norm: "Column | str") -> "Column":
    """A stable id from the normalised query text (the same text -> the same id in every table)."""
    from pyspark.sql import functions as F

    return F.substring(F.sha2(F.col(query_norm) if isinstance(query_norm, str) else query_norm, 256), 1, 16)


# --------------------------------------------------------------------------------------- products

def tag_products(bronze: "DataFrame", c: "CleanConfig",
                 store: "Callable[[DataFrame], DataFrame] | None" = None) -> "DataFrame":
    """Type, normalise and validate products; de-duplicate by product_id keeping the latest record
    (``updated_at``, then ingest order). Superseded records with different content are quarantined
    as ``duplicate``; identical repeats are ``folded``. ``store``: see
    :func:`mmpipeline.clean.sql.with_clean_columns` (bronze is then read once)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from mmpipeline.clean.sql import with_clean_columns, with_price_fast

    bronze = with_price_fast(bronze, "price", c.max_price, "_price_fast")
    bronze = with_clean_columns(
        bronze, {f"_ct_{k}": ("text", k) for k in ("title", "description", "brand", "category_path")},
        extra={"_price_parsed": _price_route(c.max_price)}, store=store)
    price = F.col("_price_parsed")
    df = bronze.select(
        _blank_to_null(F.col("product_id")).alias("product_id"),
        F.substring(F.col("_ct_title"), 1, c.max_title_chars).alias("title"),
        F.col("_ct_description").alias("description"),
        F.col("_ct_brand").alias("brand"),
        F.col("_ct_category_path").alias("category_path"),
        (F.col("attributes") if "attributes" in bronze.columns else F.lit(None).cast("map<string,string>")).alias("attributes"),
        price.alias("_price"),
        F.upper(_blank_to_null(F.col("currency"))).alias("_currency_col"),
        _blank_to_null(F.col("image_ref")).alias("image_ref"),
        _try_double("popularity").alias("popularity"),
        _try_double("rating").alias("rating"),
        parse_timestamp(F.col("updated_at")).alias("updated_at"),
        *_meta_cols(bronze),
    )
    df = df.withColumn("attributes", F.map_filter(
        F.transform_values("attributes", lambda k, v: F.trim(v)), lambda k, v: v != ""))
    df = (df.withColumn("price", F.col("_price.price"))
          .withColumn("currency", F.coalesce(F.col("_currency_col"), F.col("_price.currency"),
                                             F.when(F.col("_price.price").isNotNull(), F.lit(c.default_currency))))
          .withColumn("text_hash", text_hash("title", "description", "brand", "category_path",
                                             F.to_json(F.array_sort(F.map_entries("attributes"))))))
    reason, detail = _reason_chain([
        (F.col("_corrupt_record").isNotNull(), "malformed_record", "the reader could not parse this line"),
        (F.col("product_id").isNull(), "missing_id", "no product id"),
        (F.col("title").isNull(), "empty_title", "title empty after cleaning"),
        (F.length("title") < c.min_title_chars, "title_too_short",
         F.concat(F.lit("title shorter than "), F.lit(str(c.min_title_chars)), F.lit(" characters: "), F.col("title"))),
        (F.col("_price.error").isNotNull(), "price", F.col("_price.detail")),
    ])
    reason = F.when(reason == "price", F.col("_price.error")).otherwise(reason)
    df = df.withColumn("_reason", reason).withColumn("_detail", detail)
    content = F.sha2(F.to_json(F.struct("title", "description", "brand", "category_path",
                                        F.array_sort(F.map_entries("attributes")).alias("a"), "price", "currency",
                                        "image_ref", "popularity", "rating", "updated_at")), 256)
    df = df.withColumn("_content", content)
    w = (Window.partitionBy("product_id", F.col("_reason").isNull())
         .orderBy(F.col("updated_at").desc_nulls_last(), F.col("_row_id").desc()))
    # one projection: Spark then computes the three in one Window operator (one shuffle and sort of
    # the rows); three withColumn calls gave three Exchange + Sort + Window stages
    df = df.withColumns({"_rn": F.row_number().over(w), "_winner_content": F.first("_content").over(w),
                         "_winner_row": F.first("_row_id").over(w)})
    valid = F.col("_reason").isNull()
    outcome = (F.when(~valid, F.lit(QUARANTINED)).when(F.col("_rn") == 1, F.lit(KEPT))
               .when(F.col("_content") == F.col("_winner_content"), F.lit(FOLDED)).otherwise(F.lit(QUARANTINED)))
    dup = valid & (outcome == QUARANTINED)
    return (df.withColumn("_outcome", outcome).withColumn("_dup", dup)
            .withColumn("_reason", F.when(F.col("_dup"), F.lit("duplicate")).otherwise(F.col("_reason")))
            .withColumn("_detail", F.when(F.col("_dup"), F.concat(
                F.lit("superseded by a newer record of product "), F.col("product_id"),
                F.lit(" (bronze row "), F.col("_winner_row").cast("string"), F.lit(")"))).otherwise(F.col("_detail")))
            .drop("_price", "_currency_col", "_rn", "_winner_content", "_winner_row", "_dup"))


def products_silver(tagged: "DataFrame") -> "DataFrame":
    """Kept products (without the image columns, see :func:`attach_images`)."""
    from pyspark.sql import functions as F

    return tagged.where(F.col("_outcome") == KEPT).select(
        "product_id", "title", "description", "brand", "category_path", "attributes", "price", "currency",
        "image_ref", "popularity", "rating", "updated_at", "text_hash", "_batch_id")


def attach_images(products: "DataFrame", checks: "DataFrame | None") -> "DataFrame":
    """Join image check results onto products; products without a reference get status ``none``."""
    from pyspark.sql import functions as F

    if checks is None:
        return products.select("*", *[F.lit(None).cast(t).alias(n) for n, t in [
            ("image_path", "string"), ("image_width", "int"), ("image_height", "int"), ("image_hash", "string")]],
            F.when(F.col("image_ref").isNull(), F.lit("none")).otherwise(F.lit("unchecked")).alias("image_status"))
    ch = checks.select("product_id", "image_path", "image_status", "image_width", "image_height", "image_hash")
    out = products.join(ch, "product_id", "left")
    return out.withColumn("image_status", F.coalesce("image_status", F.lit("none")))


def image_quarantine(checks: "DataFrame", run_date) -> "DataFrame":
    from pyspark.sql import functions as F

    return checks.where(~F.col("image_status").isin("ok", "none")).select(
        F.lit(run_date).cast("date").alias("run_date"), "product_id", "image_ref",
        F.col("image_status").alias("reason"), F.col("image_detail").alias("detail"))


# ---------------------------------------------------------------------------------------- queries

def tag_queries(bronze: "DataFrame", store: "Callable[[DataFrame], DataFrame] | None" = None) -> "DataFrame":
    """Normalise queries; rows with no usable text (and no audio) are quarantined. Every valid row
    is kept: rows with the same normalised text aggregate into one silver query (frequency)."""
    from pyspark.sql import functions as F

    bronze = _with_clean_query(bronze, store)
    df = bronze.select(
        F.col("_ct_query").alias("query"), F.col("_cq_query").alias("query_norm"),
        _blank_to_null(F.col("audio_ref")).alias("audio_ref"),
        F.col("frequency").try_cast("double").alias("_freq"), *_meta_cols(bronze))
    reason, detail = _reason_chain([
        (F.col("_corrupt_record").isNotNull(), "malformed_record", "the reader could not parse this line"),
        (F.col("query_norm").isNull() & F.col("audio_ref").isNull(), "empty_query", "query empty after normalisation"),
        (F.col("_freq") < 0, "negative_frequency", F.concat(F.lit("frequency "), F.col("_freq").cast("string"))),
    ])
    return (df.withColumn("_reason", reason).withColumn("_detail", detail)
            .withColumn("_outcome", F.when(F.col("_reason").isNotNull(), F.lit(QUARANTINED)).otherwise(F.lit(KEPT))))


def queries_silver(tagged: "DataFrame") -> "DataFrame":
    """One row per normalised query (voice queries without text: per audio file)."""
    from pyspark.sql import functions as F

    key = F.coalesce(F.col("query_norm"), F.concat(F.lit("audio:"), F.col("audio_ref")))
    g = (tagged.where(F.col("_outcome") == KEPT).withColumn("_key", key)
         .groupBy("_key").agg(
             F.min_by("query", "_row_id").alias("query"), F.first("query_norm", ignorenulls=True).alias("query_norm"),
             F.min_by("audio_ref", "_row_id").alias("audio_ref"),
             F.sum(F.coalesce(F.col("_freq"), F.lit(1.0))).cast("long").alias("frequency")))
    return g.select(query_id_col("_key").alias("query_id"), "query", "query_norm", "audio_ref", "frequency",
                    F.sha2(F.col("_key"), 256).alias("text_hash"))


def derived_queries(existing: "DataFrame | None", *sources: "DataFrame | None") -> "DataFrame | None":
    """Queries that appear only in judgments/interactions (e.g. generated attribute queries): one
    silver query each, frequency = the number of rows that mention it."""
    from pyspark.sql import functions as F

    parts = [s.select("query_id", "query_norm", "_query_text") for s in sources if s is not None]
    if not parts:
        return None
    u = parts[0]
    for p in parts[1:]:
        u = u.unionByName(p)
    g = u.groupBy("query_id", "query_norm").agg(F.min("_query_text").alias("query"), F.count("*").alias("frequency"))
    if existing is not None:
        g = g.join(existing.select("query_id"), "query_id", "left_anti")
    return g.select("query_id", "query", "query_norm", F.lit(None).cast("string").alias("audio_ref"),
                    F.col("frequency").cast("long"), F.sha2("query_norm", 256).alias("text_hash"))


# -------------------------------------------------------------------------------------- judgments

def _with_product_check(df: "DataFrame", product_ids: "DataFrame | None") -> "DataFrame":
    """``_known_product``: the row's product is one of ``product_ids``, which holds each id once (the
    stage passes the kept products, one per id, or ``silver.products``, keyed by id). No ``distinct``
    over the catalog (an aggregation and shuffle of every product id: 1.9 of 8.1 s of a cold 200k-judgment
    run at 1M products); an id listed twice would duplicate rows, which the stage's row accounting refuses."""
    from pyspark.sql import functions as F

    if product_ids is None:
        return df.withColumn("_known_product", F.lit(True))
    ids = product_ids.select(F.col("product_id").alias("_pid")).withColumn("_known_product", F.lit(True))
    return (df.join(ids, df["product_id"] == ids["_pid"], "left").drop("_pid")
            .withColumn("_known_product", F.coalesce("_known_product", F.lit(False))))


def tag_judgments(bronze: "DataFrame", c: "CleanConfig", product_ids: "DataFrame | None" = None,
                  store: "Callable[[DataFrame], DataFrame] | None" = None) -> "DataFrame":
    """Normalise and validate judgments; repeated (query, product) pairs aggregate (mean grade)."""
    from pyspark.sql import functions as F

    bronze = _with_clean_query(bronze, store)
    df = bronze.select(
        F.col("_ct_query").alias("_query_text"), F.col("_cq_query").alias("query_norm"),
        _blank_to_null(F.col("product_id")).alias("product_id"), F.col("grade").alias("_grade_raw"),
        _try_double("grade").alias("grade"), *_meta_cols(bronze))
    df = _with_product_check(df, product_ids).withColumn("query_id", query_id_col("query_norm"))
    reason, detail = _reason_chain([
        (F.col("_corrupt_record").isNotNull(), "malformed_record", "the reader could not parse this line"),
        (F.col("query_norm").isNull(), "empty_query", "query empty after normalisation"),
        (F.col("product_id").isNull(), "missing_id", "no product id"),
        (F.col("grade").isNull(), "invalid_grade", F.concat(F.lit("grade not a number: "), F.coalesce(F.col("_grade_raw"), F.lit("null")))),
        ((F.col("grade") < c.grade_min) | (F.col("grade") > c.grade_max) | F.isnan("grade"), "grade_out_of_range",
         F.concat(F.lit(f"grade outside [{c.grade_min}, {c.grade_max}]: "), F.col("_grade_raw"))),
        (~F.col("_known_product"), "unknown_product",
         F.concat(F.lit("product "), F.col("product_id"), F.lit(" is not in this run's clean catalog"))),
    ])
    return (df.withColumn("_reason", reason).withColumn("_detail", detail)
            .withColumn("_outcome", F.when(F.col("_reason").isNotNull(), F.lit(QUARANTINED)).otherwise(F.lit(KEPT))))


def judgments_silver(tagged: "DataFrame", source: str) -> "DataFrame":
    from pyspark.sql import functions as F

    return (tagged.where(F.col("_outcome") == KEPT).groupBy("query_id", "query_norm", "product_id")
            .agg(F.avg("grade").alias("grade")).withColumn("source", F.lit(source)))


# ----------------------------------------------------------------------------------- interactions

def tag_interactions(bronze: "DataFrame", product_ids: "DataFrame | None" = None,
                     store: "Callable[[DataFrame], DataFrame] | None" = None) -> "DataFrame":
    """Validate search events; exact repeats of an event are folded."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    bronze = _with_clean_query(bronze, store)
    df = bronze.select(
        F.col("_ct_query").alias("_query_text"), F.col("_cq_query").alias("query_norm"),
        _blank_to_null(F.col("product_id")).alias("product_id"),
        F.lower(_blank_to_null(F.col("event_type"))).alias("event_type"), F.col("event_ts").alias("_ts_raw"),
        parse_timestamp(F.col("event_ts")).alias("event_ts"), _blank_to_null(F.col("session_id")).alias("session_id"),
        *_meta_cols(bronze))
    df = _with_product_check(df, product_ids).withColumn("query_id", query_id_col("query_norm"))
    reason, detail = _reason_chain([
        (F.col("_corrupt_record").isNotNull(), "malformed_record", "the reader could not parse this line"),
        (F.col("query_norm").isNull(), "empty_query", "query empty after normalisation"),
        (F.col("product_id").isNull(), "missing_id", "no product id"),
        (F.col("session_id").isNull(), "missing_session", "no session id"),
        (~F.coalesce(F.col("event_type").isin(EVENT_TYPES), F.lit(False)), "invalid_event_type",
         F.concat(F.lit(f"event type not in {EVENT_TYPES}: "), F.coalesce("event_type", F.lit("null")))),
        (F.col("event_ts").isNull(), "invalid_timestamp",
         F.concat(F.lit("cannot parse timestamp "), F.coalesce("_ts_raw", F.lit("null")))),
        (~F.col("_known_product"), "unknown_product",
         F.concat(F.lit("product "), F.col("product_id"), F.lit(" is not in this run's clean catalog"))),
    ])
    keys = ["session_id", "query_id", "product_id", "event_type", "event_ts"]
    w = Window.partitionBy(*keys, F.col("_reason").isNull()).orderBy("_row_id")
    df = df.withColumn("_reason", reason).withColumn("_detail", detail).withColumn("_rn", F.row_number().over(w))
    outcome = (F.when(F.col("_reason").isNotNull(), F.lit(QUARANTINED)).when(F.col("_rn") == 1, F.lit(KEPT))
               .otherwise(F.lit(FOLDED)))
    return df.withColumn("_outcome", outcome).drop("_rn")


def interactions_silver(tagged: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F

    return tagged.where(F.col("_outcome") == KEPT).select(
        "query_id", "query_norm", "product_id", "event_type", "event_ts", "session_id")


# ------------------------------------------------------------------------------------- quarantine

def quarantine_rows(tagged: "DataFrame", key: str | list[str], run_date) -> "DataFrame":
    """The quarantined rows of a tagged frame in the ``quarantine.*`` shape."""
    from pyspark.sql import functions as F

    keys = [key] if isinstance(key, str) else key
    rk = F.concat_ws("|", *[F.col(k) for k in keys]) if len(keys) > 1 else F.col(keys[0])
    return tagged.where(F.col("_outcome") == QUARANTINED).select(
        F.lit(run_date).cast("date").alias("run_date"), F.col("_reason").alias("reason"),
        F.col("_detail").alias("detail"), rk.alias("record_key"), F.col("_raw").alias("record"),
        "_source_file", "_batch_id")


def outcome_counts(tagged: "DataFrame") -> dict[str, object]:
    """{'in': n, 'kept': .., 'folded': .., 'quarantined': .., 'reasons': {reason: n}} in one job."""
    rows = tagged.groupBy("_outcome", "_reason").count().collect()
    out: dict[str, object] = {KEPT: 0, FOLDED: 0, QUARANTINED: 0}
    reasons: dict[str, int] = {}
    for r in rows:
        out[r["_outcome"]] = int(out.get(r["_outcome"], 0)) + r["count"]
        if r["_outcome"] == QUARANTINED:
            reasons[r["_reason"] or "unknown"] = reasons.get(r["_reason"] or "unknown", 0) + r["count"]
    out["in"] = sum(int(out[k]) for k in (KEPT, FOLDED, QUARANTINED))
    out["reasons"] = reasons
    return out


def carry_unchanged(new: "DataFrame", old: "DataFrame | None", keys: list[str],
                    meta: tuple[str, ...] = ("run_date", "_batch_id")) -> "DataFrame":
    """Rows whose content equals the current silver row keep its ``run_date``/``_batch_id``, so a
    snapshot merge rewrites only rows that really changed (and ``run_date`` = when content last changed)."""
    from pyspark.sql import functions as F

    if old is None:
        return new
    meta = tuple(m for m in meta if m in new.columns)
    content = [c for c in new.columns if c not in meta]
    h = F.sha2(F.to_json(F.struct(*content)), 256)
    o = old.select(*keys, h.alias("_old_h"), *[F.col(m).alias(f"_old{m}") for m in meta])
    n = new.withColumn("_new_h", F.sha2(F.to_json(F.struct(*content)), 256)).join(o, keys, "left")
    same = F.coalesce(F.col("_new_h") == F.col("_old_h"), F.lit(False))
    for m in meta:
        n = n.withColumn(m, F.when(same, F.col(f"_old{m}")).otherwise(F.col(m)))
    return n.select(*new.columns)
