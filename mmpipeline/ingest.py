"""Ingest stage: every configured source -> ``bronze.<entity>``, as received, with ingest metadata.

For each source (products first, so derived sources can use them) the adapter maps the input onto
the canonical columns (all strings), and the stage adds ``run_date``, ``_batch_id``,
``_ingested_at``; ``_raw`` keeps the source row as JSON and ``_corrupt_record`` the text of a line
the reader could not parse (kept, quarantined by the clean stage).

Writes overwrite the run date's partition in one commit, so a re-run replaces rather than appends.
``_batch_id`` fingerprints the input (files' size and mtime, the source config, the run date): when
the partition already holds the same batch the source is skipped, so re-running a run date leaves
bronze byte-for-byte unchanged (``--full-refresh`` re-reads anyway).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from typing import Any

from mmpipeline.context import RunContext, StageError
from mmpipeline.sources import ENTITY_ORDER, get_adapter
from mmpipeline.sources.generic import count_source_records, source_files

log = logging.getLogger(__name__)


def batch_id(entity: str, src, run_date: dt.date, extra: str = "") -> str:
    """Deterministic fingerprint of one source's input for a run date."""
    files = []
    if src.path:
        for f in source_files(src.path):
            st = f.stat()
            files.append([str(f), st.st_size, st.st_mtime_ns])
    payload = json.dumps({"entity": entity, "run_date": str(run_date), "files": files,
                          "source": src.model_dump(mode="json"), "extra": extra}, sort_keys=True, default=str)
    return f"{entity}-{run_date:%Y%m%d}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def partition_stats(lake, name: str, run_date: dt.date) -> dict[str, Any]:
    """Rows, corrupt rows and batch ids in one run-date partition (delta-rs; no Spark)."""
    import pyarrow.compute as pc

    if not lake.exists(name):
        return {"rows": 0, "corrupt": 0, "batches": []}
    t = lake.read_arrow(name, columns=["_batch_id", "_corrupt_record"], filters=[("run_date", "=", run_date)])
    return {"rows": t.num_rows, "corrupt": t.num_rows - t.column("_corrupt_record").null_count,
            "batches": sorted(x for x in pc.unique(t.column("_batch_id")).to_pylist() if x)}


def _undo(lake, name: str, version_before: int | None, run_date: dt.date) -> None:
    """Put a table back as it was before this run's write (a refused ingest leaves no trace)."""
    if version_before is None:
        lake.delete(name, f"run_date = '{run_date}'")
    else:
        lake.restore(name, version_before)


def add_ingest_meta(df, run_date: dt.date, batch: str):
    """Pure transform: adapter output -> bronze row (run date, batch id, ingest time)."""
    from pyspark.sql import functions as F

    return (df.withColumn("run_date", F.lit(run_date).cast("date"))
            .withColumn("_batch_id", F.lit(batch))
            .withColumn("_ingested_at", F.current_timestamp()))


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    if not cfg.sources:
        raise StageError(f"no sources configured in {cfg.config_path}")
    lake = ctx.spark_lake()
    spark = ctx.spark
    summary: dict[str, Any] = {}
    upstream: dict[str, Any] = {}
    rows = []
    from mmpipeline.ops import Accounting, record_accounting

    acc: list[Accounting] = []
    for entity in ENTITY_ORDER:
        src = cfg.sources.get(entity)
        if src is None:
            continue
        t0 = time.perf_counter()
        name = f"bronze.{entity}"
        extra = ""
        if src.adapter != "generic" and "products" in summary:
            extra = summary["products"]["batch_id"]  # derived from this run's products
        batch = batch_id(entity, src, ctx.run_date, extra)
        before = partition_stats(lake, name, ctx.run_date)
        if not ctx.full_refresh and before["batches"] == [batch]:
            log.info("ingest %s: batch %s already in %s for %s (%d rows); unchanged, skipped",
                     entity, batch, name, ctx.run_date, before["rows"])
            skipped = True
        else:
            records = count_source_records(src, entity)  # counted from the files, not by Spark's reader
            adapter = get_adapter(src.adapter)
            df = adapter(spark, entity, src, upstream)
            df = add_ingest_meta(df, ctx.run_date, batch)
            v_before = lake.version(name)
            lake.write(name, df, mode="overwrite", partition={"run_date": ctx.run_date},
                       metadata={"stage": "ingest", "batch_id": batch})
            skipped = False
            written = partition_stats(lake, name, ctx.run_date)["rows"]
            if records is not None:
                acc.append(Accounting(name, records, written, 0))
                if records != written:
                    _undo(lake, name, v_before, ctx.run_date)
                    raise StageError(
                        f"ingest refused for {ctx.run_date}: {src.path} holds {records:,} records but Spark's "
                        f"{src.format} reader produced {written:,} rows for {name}: the reader options do not fit "
                        f"the file (check sources.{entity}.options: multiLine, quote, escape, sep, comment, "
                        f"encoding). {name} was left as it was.")
        if entity == "products":
            from pyspark.sql import functions as F

            upstream["products"] = lake.read(name).where(F.col("run_date") == F.lit(ctx.run_date))
        stats = partition_stats(lake, name, ctx.run_date)
        secs = round(time.perf_counter() - t0, 2)
        log.info("ingest %s: %d rows (%d malformed) -> %s in %.1fs", entity, stats["rows"], stats["corrupt"], name, secs)
        summary[entity] = {"table": name, "rows": stats["rows"], "malformed": stats["corrupt"], "batch_id": batch,
                           "skipped_unchanged": skipped, "seconds": secs, "source": src.path or src.adapter}
        rows.append([name, stats["rows"], stats["corrupt"], "unchanged" if skipped else "written", secs])
    from mmpipeline.ops import print_table

    print_table(f"ingest: bronze for {ctx.run_date}", ["table", "rows", "malformed", "status", "seconds"], rows)
    if acc:  # source records (counted from the files) = bronze rows
        record_accounting(ctx, "ingest", acc, title="in = source records, kept = bronze rows")
    return {"tables": summary}
