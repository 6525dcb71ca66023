"""How long the validate stage takes on silver tables of realistic size (JSON on stdout).

    python -m mmpipeline.bench.validate --rows 50000 [--lake /tmp/validate-timing]
    mmpipeline bench validate --param rows=50000 [--param lake=/tmp/validate-timing]

Builds silver.products (``rows``), silver.judgments (``rows``) and silver.queries (``rows // 5``)
with Spark in a scratch lake, then runs the stage for two run dates (the second one also checks the
row-count change against the first) and prints per-table seconds, next to a baseline: the products
suite's core checks as one hand-written Spark aggregation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time


def build_tables(lake, spark, rows: int, run_date: dt.date) -> None:
    from pyspark.sql import functions as F

    ids = spark.range(rows)
    products = ids.select(
        F.concat(F.lit("p"), F.col("id").cast("string")).alias("product_id"),
        F.concat(F.lit("product title "), F.col("id").cast("string")).alias("title"),
        F.lit("a description").alias("description"), F.lit("brand").alias("brand"),
        F.lit("A > B > C").alias("category_path"), F.create_map(F.lit("colour"), F.lit("red")).alias("attributes"),
        (F.col("id") % 500 + 0.99).alias("price"), F.lit("USD").alias("currency"),
        F.when(F.col("id") % 4 != 0, F.concat(F.col("id").cast("string"), F.lit(".jpg"))).alias("image_ref"),
        F.lit(None).cast("string").alias("image_path"),
        F.when(F.col("id") % 4 == 0, F.lit("none")).when(F.col("id") % 50 == 1, F.lit("corrupt"))
        .otherwise(F.lit("ok")).alias("image_status"),
        F.lit(60).alias("image_width"), F.lit(80).alias("image_height"), (F.col("id") % 100).cast("double").alias("popularity"),
        (F.col("id") % 5).cast("double").alias("rating"), F.current_timestamp().alias("updated_at"),
        F.sha2(F.col("id").cast("string"), 256).alias("text_hash"), F.lit(None).cast("string").alias("image_hash"),
        F.lit(run_date).alias("run_date"), F.lit("b1").alias("_batch_id"))
    lake.write("silver.products", products, mode="overwrite")
    judgments = ids.select(
        F.concat(F.lit("q"), (F.col("id") % (rows // 6 + 1)).cast("string")).alias("query_id"),
        F.concat(F.lit("query "), (F.col("id") % (rows // 6 + 1)).cast("string")).alias("query_norm"),
        F.concat(F.lit("p"), F.col("id").cast("string")).alias("product_id"),
        (F.col("id") % 4).cast("double").alias("grade"), F.lit("timing").alias("source"), F.lit(run_date).alias("run_date"))
    lake.write("silver.judgments", judgments, mode="overwrite")
    queries = spark.range(rows // 5).select(
        F.concat(F.lit("q"), F.col("id").cast("string")).alias("query_id"),
        F.concat(F.lit("Query "), F.col("id").cast("string")).alias("query"),
        F.concat(F.lit("query "), F.col("id").cast("string")).alias("query_norm"),
        F.lit(None).cast("string").alias("audio_ref"), (F.col("id") % 7).alias("frequency"),
        F.sha2(F.col("id").cast("string"), 256).alias("text_hash"), F.lit(run_date).alias("run_date"))
    lake.write("silver.queries", queries, mode="overwrite")


def plain_spark_checks(lake, cfg) -> float:
    """Baseline: the products suite's core checks as one hand-written Spark aggregation (seconds)."""
    from pyspark.sql import functions as F

    t = time.perf_counter()
    df = lake.read("silver.products")
    df.agg(F.count(F.lit(1)), F.count_distinct("product_id"), F.sum(F.col("product_id").isNull().cast("int")),
           F.sum(F.col("title").isNull().cast("int")),
           F.sum(((F.col("price") < 0) | (F.col("price") > cfg.clean.max_price)).cast("int")),
           F.sum(((F.col("rating") < 0) | (F.col("rating") > 5)).cast("int")),
           F.sum((F.col("popularity") < 0).cast("int")),
           F.sum((F.col("image_ref").isNotNull() & (F.col("image_status") == "ok")).cast("int")),
           F.sum(F.col("image_ref").isNotNull().cast("int"))).collect()
    return time.perf_counter() - t


def timing(rows: int = 50_000, lake_root: str | None = None) -> dict:
    from mmpipeline.config import load_config
    from mmpipeline.context import RunContext
    from mmpipeline.validate import run

    root = lake_root or tempfile.mkdtemp(prefix="validate-timing-")
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(None, {"lake.root": root}, env={})
    out: dict = {"rows": rows, "lake": root, "runs": []}
    for i, d in enumerate((dt.date(2024, 1, 1), dt.date(2024, 1, 2))):
        ctx = RunContext.create(cfg, d)
        lake = ctx.spark_lake()
        t = time.perf_counter()
        build_tables(lake, ctx.spark, rows if i == 0 else int(rows * 1.1), d)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        summary = run(ctx)
        out["runs"].append({"run_date": str(d), "build_seconds": round(build_s, 1),
                            "validate_seconds": round(time.perf_counter() - t, 1),
                            "tables": {k: {"rows": v["rows"], "checks": v["checks"], "seconds": v["seconds"]}
                                       for k, v in summary["tables"].items()},
                            "failed_critical": summary["failed_critical"], "warnings": summary["warnings"],
                            "plain_spark_products_seconds": round(plain_spark_checks(lake, cfg), 2)})
    return out


# ------------------------------------------------------------------------ GE vs one Spark scan

def spark_products_checks(df, cfg) -> dict[str, bool]:
    """The silver.products suite's checks as one hand-written Spark aggregation: {check: passed}."""
    from pyspark.sql import functions as F

    q, c = cfg.quality, cfg.clean
    lo_r, hi_r = q.rating_range
    col = F.col
    has_ref = col("image_ref").isNotNull()
    r = df.agg(
        F.count(F.lit(1)).alias("n"), F.count_distinct("product_id").alias("distinct_ids"),
        F.count_if(col("product_id").isNull()).alias("null_ids"), F.count_if(col("title").isNull()).alias("null_titles"),
        F.count_if((col("price") < 0) | (col("price") > c.max_price)).alias("bad_price"),
        F.count_if((col("rating") < lo_r) | (col("rating") > hi_r)).alias("bad_rating"),
        F.count_if(col("popularity") < 0).alias("bad_popularity"),
        F.count_if(col("image_status").isNotNull() & ~col("image_status").isin(list(q.image_statuses))).alias("bad_status"),
        F.count_if(has_ref).alias("refs"),
        F.count_if(has_ref & col("image_status").isin(list(q.decodable_image_statuses))).alias("decodable"),
    ).first()
    non_null_ids = r["n"] - r["null_ids"]
    return {
        "row_count": r["n"] >= q.min_rows,
        "key_not_null(product_id)": r["null_ids"] == 0,
        "key_unique(product_id)": r["distinct_ids"] == non_null_ids,
        "title_not_null": r["null_titles"] == 0,
        "price_range": r["bad_price"] == 0,
        "rating_range": r["bad_rating"] == 0,
        "popularity_non_negative": r["bad_popularity"] == 0,
        "image_status_domain": r["bad_status"] == 0,
        "decodable_image_share": r["refs"] == 0 or r["decodable"] / r["refs"] >= q.min_decodable_image_share,
    }


def ge_vs_spark(ctx, lake, table_name: str = "silver.products") -> dict:
    """Seconds of the GE suite of ``table_name`` vs the same checks as one Spark aggregation, on the
    same (cached) frame, with both verdicts per check. Each runs twice; the second run is reported
    (the first pays one-off costs: GE context and expectation classes, Spark code generation)."""
    from mmpipeline.schemas import table
    from mmpipeline.validate import GXProject
    from mmpipeline.validate.suites import silver_checks

    cfg = ctx.cfg
    df = lake.read(table_name).cache()
    n = df.count()
    project = GXProject.ephemeral(spark=lake.spark)
    checks = silver_checks(table(table_name), cfg)
    ge_s, sp_s, summary_s = [], [], []
    for _ in range(2):
        t = time.perf_counter()
        rep = project.validate(df, table_name, table_name, checks, data_docs=False)
        ge_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        verdicts = spark_products_checks(df, cfg)
        sp_s.append(time.perf_counter() - t)
    project.result_detail = "always"  # how it was: SUMMARY (examples of unexpected values) every run
    t = time.perf_counter()
    project.validate(df, table_name, table_name, checks, data_docs=False)
    summary_s.append(time.perf_counter() - t)
    df.unpersist()
    ge = {r.check_name: bool(r.success) for r in rep.results}
    same = {k: ge.get(k) == v for k, v in verdicts.items() if k in ge}
    return {"table": table_name, "rows": n, "checks": len(rep.results), "ge_seconds": round(ge_s[-1], 2),
            "spark_seconds": round(sp_s[-1], 2), "ge_first_seconds": round(ge_s[0], 2),
            "ge_over_spark": round(ge_s[-1] / sp_s[-1], 2) if sp_s[-1] else None,
            "ge_summary_format_seconds": round(summary_s[-1], 2),
            "same_verdicts": all(same.values()) and bool(same), "verdicts_compared": len(same)}


def main(cfg, params: dict) -> dict:
    """``mmpipeline bench validate [--param rows=N] [--param lake=DIR]`` (the config is not used: the
    benchmark builds its own scratch lake)."""
    return timing(int(params.get("rows", 50_000)), params.get("lake"))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--lake")
    a = p.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    print(json.dumps(timing(a.rows, a.lake), indent=2))
