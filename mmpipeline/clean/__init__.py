"""Clean stage: ``bronze.*`` (this run date) -> ``silver.*`` + ``quarantine.*`` + row accounting.

Per entity the pure transforms in :mod:`mmpipeline.clean.transforms` type, normalise, validate and
de-duplicate the bronze rows; this module only reads and writes at the edge:

* ``silver.products`` / ``silver.queries`` / ``silver.judgments`` / ``silver.voice_queries``: merged
  by key as a snapshot of this run (rows absent from the run are deleted; unchanged rows are not
  rewritten and keep the run date their content last changed);
* ``silver.interactions``: the run date's partition, overwritten;
* ``quarantine.<entity>`` and ``quarantine.images``: the run date's partition, overwritten;
* ``ops.row_accounting``: rows in = kept + quarantined per table, printed at the end (kept includes
  identical repeats folded into one silver row, and query rows aggregated into one query).

Image references are checked in parallel on the executors; a product whose image fails is kept
text-only (``image_status`` says why) with a row in ``quarantine.images``.
Re-running a run date leaves every table's contents unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from mmpipeline.context import RunContext, StageError

log = logging.getLogger(__name__)


def _bronze(ctx: RunContext, lake, entity: str):
    from pyspark.sql import functions as F

    name = f"bronze.{entity}"
    if not lake.exists(name):
        raise StageError(f"{name} does not exist: run `mmpipeline run ingest` for {ctx.run_date} first")
    df = lake.read(name).where(F.col("run_date") == F.lit(ctx.run_date))
    return df


def _old(lake, name: str):
    return lake.read(name) if lake.exists(name) else None


def _write_snapshot(ctx: RunContext, lake, name: str, df, keys: list[str]) -> dict[str, Any]:
    from mmpipeline.clean.transforms import carry_unchanged
    from mmpipeline.lake import conform_spark
    from mmpipeline.schemas import table

    spec = table(name)
    df = conform_spark(df, spec)
    old = _old(lake, name)
    df = carry_unchanged(df, old, keys)
    m = lake.merge(name, df, keys=keys, delete_missing=True, metadata={"stage": "clean", "run_date": str(ctx.run_date)})
    log.info("clean: %s merged (inserted %s, updated %s, deleted %s)", name, m.get("num_target_rows_inserted"),
             m.get("num_target_rows_updated"), m.get("num_target_rows_deleted"))
    return {k: v for k, v in m.items() if k.startswith("num_target") or k == "created"}


def _write_partition(ctx: RunContext, lake, name: str, df) -> None:
    lake.write(name, df, mode="overwrite", partition={"run_date": ctx.run_date},
               metadata={"stage": "clean", "run_date": str(ctx.run_date)})


def run(ctx: RunContext) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from mmpipeline.clean import transforms as T
    from mmpipeline.clean.images import check_images, image_record
    from mmpipeline.ops import Accounting, print_table, record_accounting

    cfg, c, d = ctx.cfg, ctx.cfg.clean, ctx.run_date
    if not cfg.sources:
        raise StageError(f"no sources configured in {cfg.config_path}")
    lake = ctx.spark_lake()
    spark = ctx.spark
    acc: list[Accounting] = []
    reasons_rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    cached = []

    def account(entity: str, table_name: str, counts: dict[str, Any], extra: dict[str, Any] | None = None):
        kept = int(counts[T.KEPT]) + int(counts[T.FOLDED])
        acc.append(Accounting(table_name, int(counts["in"]), kept, int(counts[T.QUARANTINED])))
        for reason, n in sorted(counts["reasons"].items(), key=lambda kv: -kv[1]):
            reasons_rows.append([f"quarantine.{entity}", reason, n])
        summary[entity] = {"rows_in": counts["in"], "silver_rows": counts[T.KEPT], "folded": counts[T.FOLDED],
                           "quarantined": counts[T.QUARANTINED], "reasons": counts["reasons"], **(extra or {})}
        log.info("clean %s: %d in -> %d silver rows (+%d folded) + %d quarantined %s", entity, counts["in"],
                 counts[T.KEPT], counts[T.FOLDED], counts[T.QUARANTINED], counts["reasons"] or "")

    product_ids = None
    t0 = time.perf_counter()
    # ------------------------------------------------------------------------------ products
    if "products" in cfg.sources:
        src = cfg.sources["products"]
        tagged = T.tag_products(_bronze(ctx, lake, "products"), c).cache()
        cached.append(tagged)
        counts = T.outcome_counts(tagged)
        products = T.products_silver(tagged)
        root = src.image_root or (os.path.dirname(src.path) if src.path else None)
        checks = None
        img_counts: dict[str, int] = {}
        refs = products.where(F.col("image_ref").isNotNull())
        if root is not None:
            parts = c.image_partitions or max(2, spark.sparkContext.defaultParallelism)
            prev = lake.read("ops.image_checks") if lake.exists("ops.image_checks") else None
            checks = check_images(refs, root, c.image, partitions=parts, previous=prev).cache()
            cached.append(checks)
            lake.write("ops.image_checks", image_record(checks), mode="overwrite",
                       metadata={"stage": "clean", "run_date": str(d)})
            img_counts = {r["image_status"]: r["count"] for r in checks.groupBy("image_status").count().collect()}
            log.info("clean images: %s (root %s)", img_counts, root)
        silver = T.attach_images(products, checks).withColumn("run_date", F.lit(d).cast("date"))
        merge = _write_snapshot(ctx, lake, "silver.products", silver, ["product_id"])
        _write_partition(ctx, lake, "quarantine.products", T.quarantine_rows(tagged, "product_id", d))
        if checks is not None:
            _write_partition(ctx, lake, "quarantine.images", T.image_quarantine(checks, d))
        else:
            _write_partition(ctx, lake, "quarantine.images", spark.createDataFrame(
                [], "run_date date, product_id string, image_ref string, reason string, detail string"))
        account("products", "silver.products", counts, {"images": img_counts, "merge": merge})
        n_refs = sum(img_counts.values())
        n_ok = img_counts.get("ok", 0)
        if n_refs:  # image references checked: ok vs failed (the products themselves are kept)
            acc.append(Accounting("silver.products:images", n_refs, n_ok, n_refs - n_ok))
        for status, n in sorted(img_counts.items()):
            if status not in ("ok", "none"):
                reasons_rows.append(["quarantine.images", status, n])
        product_ids = tagged.where(F.col("_outcome") == T.KEPT).select("product_id")
    elif lake.exists("silver.products"):
        product_ids = lake.read("silver.products").select("product_id")

    # ------------------------------------------------------------------------ judgments / interactions
    derived_from = []
    if "judgments" in cfg.sources:
        src = cfg.sources["judgments"]
        tagged = T.tag_judgments(_bronze(ctx, lake, "judgments"), c, product_ids).cache()
        cached.append(tagged)
        counts = T.outcome_counts(tagged)
        label = str(src.params.get("label") or (src.adapter if src.adapter != "generic" else cfg.name))
        silver = T.judgments_silver(tagged, label).withColumn("run_date", F.lit(d).cast("date"))
        merge = _write_snapshot(ctx, lake, "silver.judgments", silver, ["query_id", "product_id"])
        _write_partition(ctx, lake, "quarantine.judgments", T.quarantine_rows(tagged, ["_query_text", "product_id"], d))
        account("judgments", "silver.judgments", counts, {"merge": merge})
        derived_from.append(tagged.where(F.col("_outcome") == T.KEPT))
    if "interactions" in cfg.sources:
        tagged = T.tag_interactions(_bronze(ctx, lake, "interactions"), product_ids).cache()
        cached.append(tagged)
        counts = T.outcome_counts(tagged)
        silver = T.interactions_silver(tagged).withColumn("run_date", F.lit(d).cast("date"))
        _write_partition(ctx, lake, "silver.interactions", silver)
        _write_partition(ctx, lake, "quarantine.interactions", T.quarantine_rows(tagged, "session_id", d))
        account("interactions", "silver.interactions", counts)
        derived_from.append(tagged.where(F.col("_outcome") == T.KEPT))

    # ---------------------------------------------------------------------------------- queries
    queries = None
    if "queries" in cfg.sources:
        tagged = T.tag_queries(_bronze(ctx, lake, "queries")).cache()
        cached.append(tagged)
        counts = T.outcome_counts(tagged)
        queries = T.queries_silver(tagged)
        _write_partition(ctx, lake, "quarantine.queries", T.quarantine_rows(tagged, "query", d))
        account("queries", "silver.queries", counts)
    extra = T.derived_queries(queries, *derived_from)
    if queries is not None or extra is not None:
        allq = queries if extra is None else (extra if queries is None else queries.unionByName(extra))
        allq = allq.withColumn("run_date", F.lit(d).cast("date")).cache()
        cached.append(allq)
        n_q = allq.count()
        merge = _write_snapshot(ctx, lake, "silver.queries", allq, ["query_id"])
        summary.setdefault("queries", {}).update({"silver_rows": n_q, "merge": merge})
        log.info("clean queries: %d distinct queries in silver.queries", n_q)
    if "voice_queries" in cfg.sources:
        tagged = T.tag_queries(_bronze(ctx, lake, "voice_queries")).cache()
        cached.append(tagged)
        counts = T.outcome_counts(tagged)
        silver = T.queries_silver(tagged).withColumn("run_date", F.lit(d).cast("date"))
        merge = _write_snapshot(ctx, lake, "silver.voice_queries", silver, ["query_id"])
        _write_partition(ctx, lake, "quarantine.voice_queries", T.quarantine_rows(tagged, "audio_ref", d))
        account("voice_queries", "silver.voice_queries", counts, {"merge": merge})

    for df in cached:
        df.unpersist()
    if reasons_rows:
        print_table(f"clean: quarantine reasons for {d}", ["table", "reason", "rows"], reasons_rows)
    record_accounting(ctx, "clean", acc)
    summary["seconds_total"] = round(time.perf_counter() - t0, 2)
    return {"tables": summary}
