"""Image checks on the share of a catalog with images: cold (no record) vs warm (last run's record).

Used by ``bench scale``: the warm run is what a nightly re-run of an unchanged catalog pays.
"""

from __future__ import annotations

import time
from typing import Any


def image_check_bench(ctx, lake) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from mmpipeline.clean.images import check_images

    src = ctx.cfg.sources.get("products")
    root = src.image_root if src else None
    if root is None or not lake.exists("silver.products"):
        return {"skipped": "no image root or no silver.products"}
    c = ctx.cfg.clean
    parts = c.image_partitions or max(2, ctx.spark.sparkContext.defaultParallelism)
    refs = lake.read("silver.products").where(F.col("image_ref").isNotNull()).select("product_id", "image_ref")
    out: dict[str, Any] = {}
    prev = lake.read("ops.image_checks") if lake.exists("ops.image_checks") else None
    for label, previous in (("cold", None), ("warm", prev)):
        t0 = time.perf_counter()
        rows = check_images(refs, root, c.image, partitions=parts, previous=previous).groupBy(
            "image_reused", "image_status").agg(F.count(F.lit(1)).alias("products"),
                                                F.count_distinct("image_ref").alias("refs")).collect()
        secs = time.perf_counter() - t0
        no_file = ("missing", "outside_root")  # nothing to open: the path check decides, every run
        opened = sum(r["refs"] for r in rows if r["image_reused"] is False and r["image_status"] not in no_file)
        reused = sum(r["refs"] for r in rows if r["image_reused"] is True)
        out[label] = {"seconds": round(secs, 2), "products": sum(r["products"] for r in rows),
                      "distinct_refs": sum(r["refs"] for r in rows), "files_opened": opened,
                      "verdicts_reused": reused,
                      "no_file": sum(r["refs"] for r in rows if r["image_status"] in no_file)}
        if previous is None and prev is None:
            break
    return out
