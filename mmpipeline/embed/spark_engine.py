"""The embed stage on Spark executors (``embed.engine: spark``): nothing is built on the driver.

Per (entity, modality, model):

1. **inputs** -- the executors read their share of ``silver.products`` / ``silver.queries`` (the
   Parquet files listed by the Delta log, :meth:`mmpipeline.lake.Lake.read`) and build the encoder
   input and its content hash with the same functions as the local engine
   (:mod:`mmpipeline.embed.data`, in ``mapInPandas``);
2. **plan** -- a join with the stored (id, content hash, model version) of the previous run and
   with the recorded failures: new, changed, other-model-version (or ``--full-refresh``) rows are
   encoded, failures of the same content and model are not retried, stored ids that vanished (or
   became unembeddable) are deleted. Only counts come back to the driver;
3. **encode** -- identical content is encoded once (distinct content hashes), in ``mapInArrow``
   tasks whose Python worker builds the model once (:func:`mmpipeline.embed.encoders.cached_encoder`)
   and reuses it for every batch and task; images are decoded one batch ahead in a thread while the
   current batch is encoded. The output (hash, vector, error) is written once to a staging folder
   next to the table, so nothing is encoded twice however often it is read;
4. **write** -- new vectors (joined back from hash to every id that has it) and deletion rows land
   in one Delta merge commit (:mod:`mmpipeline.embed.sink`); failures are merged into
   ``quarantine.embed_failures`` from Spark.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mmpipeline.embed import sink

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from mmpipeline.context import RunContext
    from mmpipeline.embed.encoders import EncoderSpec

log = logging.getLogger(__name__)

FAILURES = "quarantine.embed_failures"


@dataclass
class SparkTask:
    entity: str  # product | query
    table: str
    id_col: str
    modality: str
    spec: "EncoderSpec"
    current: "DataFrame"  # id, payload, content_hash: embeddable rows only
    empty: "DataFrame | None"  # id: rows with nothing to embed (empty text), recorded as failures
    rows_in: int
    n_empty: int = 0

    @property
    def label(self) -> str:
        return f"{self.entity} {self.modality}"


# ------------------------------------------------------------------------------------ inputs (executors)
def _prepare_products(fields: list[str], max_length: int, image_size: int | None):
    """mapInPandas: silver.products rows -> (product_id, text, text_hash, image_path, image_hash)."""

    def fn(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        import pandas as pd

        from mmpipeline.embed import data as edata

        for df in batches:
            text = [edata.build_text(v) for v in zip(*(df[f].tolist() for f in fields))] if len(df) else []
            ok = (df["image_status"] == "ok") & df["image_path"].notna() & (df["image_path"].astype(str) != "")
            ihash = [edata.image_hash(edata._image_key(p, h), image_size) if (good and image_size) else None
                     for p, h, good in zip(df["image_path"], df["image_hash"], ok)]
            yield pd.DataFrame({"product_id": df["product_id"].astype(str), "text": text,
                                "text_hash": [edata.text_hash(t, max_length) if t else None for t in text],
                                "image_path": df["image_path"].where(ok, None), "image_hash": ihash})

    return fn


def _prepare_queries(field: str, max_length: int):
    def fn(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        import pandas as pd

        from mmpipeline.embed import data as edata

        for df in batches:
            text = [edata._clean(a) or edata._clean(b) for a, b in zip(df[field], df["query"])]
            yield pd.DataFrame({"query_id": df["query_id"].astype(str), "text": text,
                                "text_hash": [edata.text_hash(t, max_length) if t else None for t in text]})

    return fn


def tasks(ctx: "RunContext", tspec: "EncoderSpec", ispec: "EncoderSpec | None") -> tuple[list[SparkTask], list]:
    """The stage's tasks with their inputs as Spark DataFrames, and the persisted frames to
    unpersist when the stage is done."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    cfg, lake = ctx.cfg, ctx.spark_lake()
    fields = list(cfg.embed.product_text_fields)
    cols = list(dict.fromkeys(["product_id", *fields, "image_path", "image_status", "image_hash"]))
    src = lake.read("silver.products").select(*cols)
    if cfg.embed.max_products:
        src = src.orderBy("product_id").limit(int(cfg.embed.max_products))
    schema = "product_id string, text string, text_hash string, image_path string, image_hash string"
    prod = src.mapInPandas(_prepare_products(fields, tspec.max_length, ispec.image_size if ispec else None),
                           schema).persist(StorageLevel.MEMORY_AND_DISK)
    out: list[SparkTask] = []
    cached = [prod]
    counts = prod.agg(F.count(F.lit(1)).alias("n"), F.count("image_hash").alias("img"),
                      F.count("text_hash").alias("txt")).first()
    pid = F.col("product_id").alias("id")
    out.append(SparkTask("product", "gold.product_embeddings", "product_id", "text", tspec,
                         prod.where(F.col("text_hash").isNotNull()).select(pid, F.col("text").alias("payload"),
                                                                          F.col("text_hash").alias("content_hash")),
                         prod.where(F.col("text_hash").isNull()).select(pid), int(counts["n"]),
                         int(counts["n"]) - int(counts["txt"])))
    if lake.exists("silver.queries"):
        f = cfg.embed.query_text_field
        q = (lake.read("silver.queries").select(*dict.fromkeys(["query_id", f, "query"]))
             .mapInPandas(_prepare_queries(f, tspec.max_length), "query_id string, text string, text_hash string")
             .persist(StorageLevel.MEMORY_AND_DISK))
        cached.append(q)
        qc = q.agg(F.count(F.lit(1)).alias("n"), F.count("text_hash").alias("txt")).first()
        qid = F.col("query_id").alias("id")
        out.append(SparkTask("query", "gold.query_embeddings", "query_id", "text", tspec,
                             q.where(F.col("text_hash").isNotNull()).select(qid, F.col("text").alias("payload"),
                                                                           F.col("text_hash").alias("content_hash")),
                             q.where(F.col("text_hash").isNull()).select(qid), int(qc["n"]),
                             int(qc["n"]) - int(qc["txt"])))
    else:
        spark = ctx.spark
        none = spark.createDataFrame([], "id string, payload string, content_hash string")
        out.append(SparkTask("query", "gold.query_embeddings", "query_id", "text", tspec, none,
                             none.select("id"), 0))
    if ispec is not None:
        out.append(SparkTask("product", "gold.product_embeddings", "product_id", "image", ispec,
                             prod.where(F.col("image_hash").isNotNull()).select(
                                 pid, F.col("image_path").alias("payload"), F.col("image_hash").alias("content_hash")),
                             None, int(counts["img"])))
    return out, cached


# ------------------------------------------------------------------------------------ encode (executors)
def _list_array(vecs) -> "pa.Array":
    import numpy as np
    import pyarrow as pa

    n, dim = vecs.shape
    flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32)), flat)


def partition_encoder(spec_json: str, modality: str, max_pixels: int, threads: int):
    """The mapInArrow function: the encoder is built once per Python worker (module-level cache,
    reused across batches and tasks); texts are encoded per Arrow batch (length-sorted inside),
    images decoded one batch ahead of the encoder."""

    def fn(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        import numpy as np
        import pyarrow as pa
        import torch

        from mmpipeline.embed.encoders import cached_encoder
        from mmpipeline.embed.imageio import prefetched_batches

        if threads > 0:
            torch.set_num_threads(threads)
        enc = cached_encoder(spec_json)
        for rb in batches:
            payloads = rb.column("payload").to_pylist()
            n = len(payloads)
            errors = [""] * n
            trunc = np.zeros(n, bool)
            if modality == "text":
                vecs = enc.encode(payloads)
                trunc = enc.truncated_flags(payloads)
            else:
                vecs = np.zeros((n, enc.dim), np.float32)
                for idx, pixels, errs in prefetched_batches(payloads, enc.transform, enc.spec.batch_size, max_pixels):
                    good = [k for k, e in enumerate(errs) if not e]
                    if good:
                        vecs[[idx[k] for k in good]] = enc.encode_pixels(
                            pixels[good] if len(good) < len(idx) else pixels)
                    for k, e in enumerate(errs):
                        if e:
                            errors[idx[k]] = e
            yield pa.RecordBatch.from_arrays(
                [rb.column("content_hash"), _list_array(vecs), pa.array(errors, pa.string()),
                 pa.array(trunc, pa.bool_())], names=["content_hash", "vector", "error", "truncated"])

    return fn


# ------------------------------------------------------------------------------------ one task
def _lit_null(dtype: str):
    from pyspark.sql import functions as F

    return F.lit(None).cast(dtype)


def run_task(ctx: "RunContext", task: SparkTask) -> dict[str, Any]:
    """Plan, encode, write one task; returns its counts (and up to 5 failure samples)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    cfg, spark, lake = ctx.cfg, ctx.spark, ctx.spark_lake()
    spec, version = task.spec, task.spec.version
    res: dict[str, Any] = {"encoded": 0, "distinct": 0, "reused": 0, "known_bad": 0, "failed": 0, "empty": 0,
                           "deleted": 0, "truncated": 0, "samples": []}
    cur = task.current
    if lake.exists(task.table):
        ex = (lake.read(task.table)
              .where((F.col("modality") == task.modality) & (F.col("model_name") == spec.name))
              .select(F.col(task.id_col).alias("id"), F.col("content_hash").alias("old_hash"),
                      F.col("model_version").alias("old_version")))
    else:
        ex = spark.createDataFrame([], "id string, old_hash string, old_version string")
    # one full outer join: current rows (payload set) against stored ones; stored-only rows are deletions
    m = cur.withColumn("is_cur", F.lit(True)).join(ex, "id", "full")
    gone = F.col("is_cur").isNull()
    new = F.col("old_hash").isNull()
    changed = ~new & (F.col("content_hash") != F.col("old_hash"))
    other_model = ~new & ~changed & ~F.col("old_version").eqNullSafe(F.lit(version))
    todo = ~gone & (F.lit(True) if ctx.full_refresh else (new | changed | other_model))
    if lake.exists(FAILURES) and not ctx.full_refresh:
        bad = (lake.read(FAILURES)
               .where((F.col("entity") == task.entity) & (F.col("modality") == task.modality)
                      & (F.col("model_name") == spec.name) & (F.col("model_version") == version))
               .select(F.col("entity_id").alias("id"), "content_hash").distinct()
               .withColumn("is_bad", F.lit(True)))
        m = m.join(bad, ["id", "content_hash"], "left")
    else:
        m = m.withColumn("is_bad", F.lit(False))
    is_bad = F.coalesce(F.col("is_bad"), F.lit(False))
    m = (m.select("id", "payload", "content_hash", todo.alias("todo"), is_bad.alias("is_bad"), gone.alias("gone"),
                  (new & todo).alias("r_new"), (changed & todo).alias("r_changed"),
                  (other_model & todo).alias("r_model"))
         .persist(StorageLevel.MEMORY_AND_DISK))
    deletes = m.where(F.col("gone")).select("id")
    # (Spark's file listing skips folders whose own name starts with '_' or '.')
    staging = Path(lake.root) / "_staging" / f"embed-{task.table}-{task.modality}-{uuid.uuid4().hex}"
    try:
        def n(c):
            return F.sum(c.cast("int"))

        st = m.agg(n(F.col("todo") & ~F.col("is_bad")).alias("encode"),
                   n(F.col("todo") & F.col("is_bad")).alias("bad"),
                   n(~F.col("todo") & ~F.col("gone")).alias("reuse"), n(F.col("gone")).alias("gone"),
                   n(F.col("r_new") & ~F.col("is_bad")).alias("new"),
                   n(F.col("r_changed") & ~F.col("is_bad")).alias("changed"),
                   n(F.col("r_model") & ~F.col("is_bad")).alias("model"),
                   F.countDistinct(F.when(F.col("todo") & ~F.col("is_bad"), F.col("content_hash"))).alias("distinct")
                   ).first()
        n_encode, n_distinct = int(st["encode"] or 0), int(st["distinct"] or 0)
        res.update(reused=int(st["reuse"] or 0), known_bad=int(st["bad"] or 0), distinct=n_distinct)
        n_delete = int(st["gone"] or 0)
        plan = {"encode": n_encode, "distinct": n_distinct, "reuse": res["reused"], "delete": n_delete,
                "known_bad": res["known_bad"]}
        if ctx.full_refresh:
            plan["encode_refresh"] = n_encode
        else:
            plan.update({f"encode_{k}": int(st[k] or 0) for k in ("new", "changed", "model")})
        log.info("embed: %s plan %s", task.label, plan)
        upserts = None
        failures = None
        if n_encode:
            rows = m.where(F.col("todo") & ~F.col("is_bad")).select("id", "content_hash", "payload")
            uniq = rows.groupBy("content_hash").agg(F.min("payload").alias("payload"))
            parts = max(1, min(n_distinct, max(cfg.embed.spark_partitions,
                                               math.ceil(n_distinct / max(1, cfg.embed.spark_rows_per_partition)))))
            schema = "content_hash string, vector array<float>, error string, truncated boolean"
            threads = cfg.embed.spark_torch_threads or max(
                1, (os.cpu_count() or 1) // max(1, spark.sparkContext.defaultParallelism))
            enc = uniq.repartition(parts).mapInArrow(
                partition_encoder(spec.to_json(), task.modality, cfg.clean.image.max_pixels, threads), schema)
            enc.write.mode("error").parquet(str(staging))  # encoded exactly once
            out = spark.read.parquet(str(staging))
            joined = rows.select("id", "content_hash").join(out, "content_hash")
            agg = joined.agg(n(F.col("error") == "").alias("ok"), n(F.col("error") != "").alias("failed"),
                             n(F.col("truncated")).alias("trunc")).first()
            res.update(encoded=int(agg["ok"] or 0), failed=int(agg["failed"] or 0), truncated=int(agg["trunc"] or 0))
            upserts = joined.where(F.col("error") == "").select(
                F.col("id").alias(task.id_col), F.lit(task.modality).alias("modality"),
                F.lit(spec.name).alias("model_name"), F.lit(version).alias("model_version"), "content_hash",
                F.size("vector").cast("int").alias("dim"), "vector", F.lit(ctx.run_date).cast("date").alias("run_date"),
                F.current_timestamp().alias("embedded_at"))
            if res["failed"]:
                bad_rows = joined.where(F.col("error") != "")
                res["samples"] = [(r["id"], r["error"]) for r in bad_rows.select("id", "error").limit(5).collect()]
                failures = bad_rows.select("id", "content_hash", F.lit("decode_failed").alias("reason"),
                                           F.col("error").alias("detail"))
        if n_delete:
            dels = deletes.select(F.col("id").alias(task.id_col), F.lit(task.modality).alias("modality"),
                                  F.lit(spec.name).alias("model_name"), _lit_null("string").alias("model_version"),
                                  _lit_null("string").alias("content_hash"), _lit_null("int").alias("dim"),
                                  _lit_null("array<float>").alias("vector"), _lit_null("date").alias("run_date"),
                                  _lit_null("timestamp").alias("embedded_at"))
            upserts = dels if upserts is None or not res["encoded"] else upserts.unionByName(dels)
        elif upserts is not None and not res["encoded"]:
            upserts = None
        if upserts is not None:
            sink.commit(lake, task.table, upserts, {"stage": "embed", "run_date": ctx.run_date,
                                                    "modality": task.modality, "model": f"{spec.name}@{version}"})
            res["deleted"] = n_delete
        if task.empty is not None:
            res["empty"] = task.n_empty
            if res["empty"]:
                empties = task.empty.select("id", F.lit("").alias("content_hash"), F.lit("empty_text").alias("reason"),
                                            F.lit("no text to embed").alias("detail"))
                failures = empties if failures is None else failures.unionByName(empties)
        if failures is not None:
            lake.merge(FAILURES, failures.select(
                F.lit(task.entity).alias("entity"), F.col("id").alias("entity_id"),
                F.lit(task.modality).alias("modality"), F.lit(spec.name).alias("model_name"),
                F.lit(version).alias("model_version"), "content_hash", "reason", "detail",
                F.lit(ctx.run_date).cast("date").alias("run_date"), F.current_timestamp().alias("recorded_at")))
        return res
    finally:
        m.unpersist()
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.parent.rmdir()  # only when empty
        except OSError:
            pass
