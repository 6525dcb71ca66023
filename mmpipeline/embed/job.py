"""The embed stage (``mmpipeline run embed``): silver tables -> ``gold.product_embeddings`` (text and
image) and ``gold.query_embeddings`` (text), incrementally.

For each (entity, modality) the stage builds the embeddable content and its content hash (the
exact encoder input: text + max length, or the image's content hash + input size), reads the stored
(id, content hash, model version) of the current model -- never the vectors -- and plans
(:func:`mmpipeline.embed.data.plan_incremental`): only new or changed content, or content stored
by another version of the model, is encoded; ``--full-refresh`` re-encodes all. Vectors of
entities that disappeared (or whose text became empty / image became unusable) are deleted for
this model; other models' rows are left alone. Nothing to encode -> no model is loaded.

Bad input never stops the run: empty text and images that fail to decode are skipped and recorded
in ``quarantine.embed_failures`` (with the content hash, so the same bad content is not retried
until it or the model changes); over-long text is truncated and counted; a product without a
usable image gets a text vector only.

Image vectors come from the encoder the config names; for the trained tower that is the version
registered by ``mmpipeline run train-image-tower`` (this stage never trains: with no tower registered
it stops with one line naming that stage, or embeds text only when ``embed.images_optional``).

Identical content (the same content hash) is encoded once and its vector stored for every id that
has it. New or changed vectors and the deletions of vanished entities of one (table, modality,
model) land in one Delta merge commit (:mod:`mmpipeline.embed.sink`), never a table rewrite.

Engines: ``local`` (default, the fast path for small catalogs; images decoded in DataLoader worker
processes, batches encoded in this process) and ``spark`` (:mod:`mmpipeline.embed.spark_engine`:
executors read the silver and gold Delta files themselves, the incremental plan is a Spark join,
the model is loaded once per Python worker and reused across batches, vectors are written from
Spark; the driver only sees counts). Both give the same vectors.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mmpipeline.embed import data as edata
from mmpipeline.embed import models, sink
from mmpipeline.embed.encoders import EncoderSpec, build_encoder, encode_image_paths

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.context import RunContext

log = logging.getLogger(__name__)

FAILURES = "quarantine.embed_failures"


@dataclass
class Task:
    entity: str  # product | query
    table: str
    id_col: str
    modality: str
    spec: EncoderSpec
    frame: pd.DataFrame  # id_col, payload (text or image path), content_hash -- embeddable rows only
    rows_in: int
    skipped_empty: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.entity} {self.modality}"


@dataclass
class TaskResult:
    label: str
    model: str
    encoded: int = 0
    reused: int = 0
    failed: int = 0
    known_bad: int = 0
    empty: int = 0
    deleted: int = 0
    truncated: int = 0
    seconds: float = 0.0
    rows_in: int = 0
    distinct: int = 0  # distinct contents encoded (identical texts/images are encoded once)

    @property
    def skipped(self) -> int:
        return self.failed + self.known_bad + self.empty

    @property
    def rate(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "encoded": self.encoded, "distinct_encoded": self.distinct, "reused": self.reused, "skipped": self.skipped,
                "failed": self.failed, "known_bad": self.known_bad, "empty": self.empty, "deleted": self.deleted,
                "truncated": self.truncated, "seconds": round(self.seconds, 2),
                "items_per_s": round(self.rate, 1)}


# ------------------------------------------------------------------------------------ helpers
# distinct contents encoded per chunk by the local engine (bounds the vectors held twice at a time)
ENCODE_CHUNK = 65_536


def vectors_table(id_col: str, ids: list[str], spec: EncoderSpec, modality: str, hashes: list[str],
                  vecs: np.ndarray, run_date: dt.date) -> pa.Table:
    """Rows of ``gold.*_embeddings`` as Arrow (vectors as list<float>, no per-row Python lists)."""
    n, dim = vecs.shape if vecs.ndim == 2 else (0, 0)
    flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32) if n else np.zeros(1, np.int32))
    now = dt.datetime.now(dt.timezone.utc)
    return pa.table({
        id_col: pa.array(ids, pa.string()), "modality": pa.array([modality] * n, pa.string()),
        "model_name": pa.array([spec.name] * n, pa.string()), "model_version": pa.array([spec.version] * n, pa.string()),
        "content_hash": pa.array(hashes, pa.string()), "dim": pa.array([dim] * n, pa.int32()),
        "vector": pa.ListArray.from_arrays(offsets, flat), "run_date": pa.array([run_date] * n, pa.date32()),
        "embedded_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    })


def _existing(lake, task: Task) -> pd.DataFrame | None:
    if not lake.exists(task.table):
        return None
    t = lake.read_arrow(task.table, columns=[task.id_col, "content_hash", "model_version"],
                        filters=[("modality", "=", task.modality), ("model_name", "=", task.spec.name)])
    return t.to_pandas()


def _failures(lake, task: Task) -> pd.DataFrame | None:
    if not lake.exists(FAILURES):
        return None
    t = lake.read_arrow(FAILURES, columns=["entity_id", "content_hash", "model_version"],
                        filters=[("entity", "=", task.entity), ("modality", "=", task.modality),
                                 ("model_name", "=", task.spec.name)])
    return t.to_pandas().rename(columns={"entity_id": task.id_col})


def _record_failures(ctx, task: Task, rows: list[tuple[str, str, str, str]]) -> None:
    """rows: (entity_id, content_hash, reason, detail)."""
    if not rows:
        return
    now = dt.datetime.now(dt.timezone.utc)
    ctx.lake.merge(FAILURES, pd.DataFrame([{
        "entity": task.entity, "entity_id": i, "modality": task.modality, "model_name": task.spec.name,
        "model_version": task.spec.version, "content_hash": h, "reason": r, "detail": d,
        "run_date": ctx.run_date, "recorded_at": now} for i, h, r, d in rows]))


# ------------------------------------------------------------------------------------ tasks
def text_tasks(products: pd.DataFrame, queries: pd.DataFrame, tspec: EncoderSpec) -> list[Task]:
    tasks: list[Task] = []
    L = tspec.max_length
    for entity, table, id_col, df in (("product", "gold.product_embeddings", "product_id", products),
                                      ("query", "gold.query_embeddings", "query_id", queries)):
        empty = (df["text"].str.len() == 0).to_numpy() if len(df) else np.zeros(0, bool)
        ok = df[~empty]
        frame = pd.DataFrame({id_col: ok[id_col].to_numpy(), "payload": ok["text"].to_numpy(),
                              "content_hash": [edata.text_hash(t, L) for t in ok["text"]]})
        tasks.append(Task(entity, table, id_col, "text", tspec, frame, len(df), df.loc[empty, id_col].tolist()))
    return tasks


def image_task(products: pd.DataFrame, ispec: EncoderSpec) -> Task:
    img = products[products["has_image"]]
    frame = pd.DataFrame({"product_id": img["product_id"].to_numpy(), "payload": img["image_path"].to_numpy(),
                          "content_hash": [edata.image_hash(k, ispec.image_size) for k in img["image_key"]]})
    return Task("product", "gold.product_embeddings", "product_id", "image", ispec, frame, len(img))


# ------------------------------------------------------------------------------------ local engine
def encode_local(encoder, modality: str, payloads: list[str], cfg) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(vectors, errors ('' = ok), truncated flags)."""
    if modality == "text":
        truncated = encoder.truncated_flags(payloads)
        return encoder.encode(payloads, progress=cfg.embed.progress, desc=f"encode text ({encoder.name})"), \
            [""] * len(payloads), truncated
    vecs, errors = encode_image_paths(encoder, payloads, cfg.embed.num_workers, progress=cfg.embed.progress,
                                      max_pixels=cfg.clean.image.max_pixels, desc=f"encode images ({encoder.name})")
    return vecs, errors, np.zeros(len(payloads), bool)


def _commit_metadata(ctx, task, stage: str = "embed") -> dict[str, Any]:
    return {"stage": stage, "run_date": ctx.run_date, "modality": task.modality,
            "model": f"{task.spec.name}@{task.spec.version}"}


# ------------------------------------------------------------------------------------ stage
def run_task(ctx: "RunContext", task: Task, encoders: dict[str, Any], stage: str = "embed") -> TaskResult:
    lake, cfg = ctx.lake, ctx.cfg
    t0 = time.perf_counter()
    res = TaskResult(task.label, f"{task.spec.name}@{task.spec.version}", rows_in=task.rows_in,
                     empty=len(task.skipped_empty))
    existing = _existing(lake, task)
    plan = edata.plan_incremental(task.frame, existing, task.spec.version, ctx.full_refresh,
                                  _failures(lake, task), id_col=task.id_col)
    log.info("embed: %s plan %s", task.label, plan.as_dict())
    res.reused, res.known_bad = len(plan.reuse), len(plan.known_bad)
    failure_rows: list[tuple[str, str, str, str]] = [(i, "", "empty_text", "no text to embed") for i in task.skipped_empty]
    source = None
    if plan.encode:
        todo = task.frame[task.frame[task.id_col].isin(set(plan.encode))].reset_index(drop=True)
        # identical content (same hash) is encoded once and its vector given to every id that has it
        codes, uniq_hashes = pd.factorize(todo["content_hash"])
        first = pd.Series(np.arange(len(todo))).groupby(codes).first().to_numpy()
        res.distinct = len(uniq_hashes)
        t_enc = time.perf_counter()
        key = task.spec.to_json()
        if key not in encoders:
            encoders[key] = build_encoder(task.spec)
        ids, hashes = todo[task.id_col].to_numpy(object), todo["content_hash"].to_numpy(object)
        payloads = todo["payload"].to_numpy(object)
        parts: list[pa.Table] = []
        # distinct contents in chunks: each chunk's vectors become Arrow rows before the next is encoded,
        # so the process holds the new vectors once (not the encoder's matrix, its per-row copy and Arrow)
        step = max(1, int(ENCODE_CHUNK))
        for s in range(0, len(first), step):
            e = min(s + step, len(first))
            vecs_u, errors_u, trunc_u = encode_local(encoders[key], task.modality, payloads[first[s:e]].tolist(), cfg)
            rows = np.flatnonzero((codes >= s) & (codes < e))  # every id whose content is in this chunk
            local = codes[rows] - s
            bad = np.array([bool(errors_u[c]) for c in local], bool)
            res.truncated += int(np.asarray(trunc_u, bool)[local].sum())
            failure_rows += [(ids[k], hashes[k], "decode_failed", errors_u[c])
                             for k, c in zip(rows[bad], local[bad])]
            if (~bad).any():
                keep = rows[~bad]
                parts.append(vectors_table(task.id_col, ids[keep].tolist(), task.spec, task.modality,
                                           hashes[keep].tolist(), vecs_u[local[~bad]], ctx.run_date))
                res.encoded += len(keep)
            del vecs_u
        if parts:
            source = pa.concat_tables(parts)
        enc_s = time.perf_counter() - t_enc
        res.failed = sum(1 for r in failure_rows if r[2] == "decode_failed")
        for i, _, _, e in [r for r in failure_rows if r[2] == "decode_failed"][:5]:
            log.warning("embed: %s %s skipped: %s", task.label, i, e)
        log.info("embed: %s encoded %d (%d distinct contents) in %.1fs (%.1f items/s)", task.label, res.encoded,
                 res.distinct, enc_s, res.encoded / enc_s if enc_s > 0 else 0.0)
    if plan.delete:
        dels = sink.deletion_rows(task.table, task.id_col, plan.delete, task.modality, task.spec.name)
        source = dels if source is None else pa.concat_tables([sink.conform(task.table, source), dels])
        res.deleted = len(plan.delete)
    if source is not None:  # new vectors and deletions: one commit
        sink.commit(lake, task.table, source, _commit_metadata(ctx, task, stage))
    _record_failures(ctx, task, failure_rows)
    res.seconds = time.perf_counter() - t0
    log.info("embed: %s [%s] encoded %d, reused %d, skipped %d (empty %d, failed %d, known bad %d), deleted %d, "
             "truncated %d, %.1f items/s", task.label, res.model, res.encoded, res.reused, res.skipped, res.empty,
             res.failed, res.known_bad, res.deleted, res.truncated, res.rate)
    return res


def run_spark(ctx: "RunContext", tspec: EncoderSpec, ispec: EncoderSpec | None) -> tuple[list, list[TaskResult]]:
    """``embed.engine: spark``: every task planned, encoded and written on the executors
    (:mod:`mmpipeline.embed.spark_engine`); the driver only sees counts."""
    from mmpipeline.embed import spark_engine

    stasks, cached = spark_engine.tasks(ctx, tspec, ispec)
    results = []
    try:
        for t in stasks:
            t0 = time.perf_counter()
            c = spark_engine.run_task(ctx, t)
            r = TaskResult(t.label, f"{t.spec.name}@{t.spec.version}", rows_in=t.rows_in,
                           **{k: c[k] for k in ("encoded", "distinct", "reused", "known_bad", "failed", "empty",
                                                "deleted", "truncated")})
            r.seconds = time.perf_counter() - t0
            for i, e in c["samples"]:
                log.warning("embed: %s %s skipped: %s", t.label, i, e)
            log.info("embed: %s [%s] encoded %d (%d distinct), reused %d, skipped %d (empty %d, failed %d, "
                     "known bad %d), deleted %d, truncated %d, %.1f items/s", t.label, r.model, r.encoded, r.distinct,
                     r.reused, r.skipped, r.empty, r.failed, r.known_bad, r.deleted, r.truncated, r.rate)
            results.append(r)
    finally:
        for df in cached:
            df.unpersist()
    return stasks, results


def run(ctx: "RunContext") -> dict[str, Any]:
    from mmpipeline.context import StageError
    from mmpipeline.ops import Accounting, print_table, record_accounting

    if not ctx.lake.exists("silver.products"):
        raise StageError("silver.products does not exist yet: run ingest and clean first")
    t0 = time.perf_counter()
    tspec = models.text_spec(ctx.cfg)
    # resolved before anything is written: a missing image tower fails here (or, with
    # embed.images_optional, gives a text-only run); this stage never trains one
    ispec = models.image_spec(ctx.cfg)
    if ctx.cfg.embed.engine == "spark":
        tasks, results = run_spark(ctx, tspec, ispec)
    else:
        products = edata.load_products(ctx.lake, ctx.cfg)
        queries = edata.load_queries(ctx.lake, ctx.cfg)
        log.info("embed: %d products (%d with a usable image), %d queries", len(products),
                 int(products["has_image"].sum()) if len(products) else 0, len(queries))
        encoders: dict[str, Any] = {}
        tasks = text_tasks(products, queries, tspec)
        results = [run_task(ctx, t, encoders) for t in tasks]
        if ispec is not None:
            tasks.append(image_task(products, ispec))
            results.append(run_task(ctx, tasks[-1], encoders))
    record_accounting(ctx, "embed", [
        Accounting(f"{t.table}:{t.modality}", r.rows_in, r.encoded + r.reused, r.skipped)
        for t, r in zip(tasks, results)])
    print_table(f"embed ({ctx.cfg.embed.engine}{', full refresh' if ctx.full_refresh else ''})",
                ["table", "model", "encoded", "reused", "skipped", "deleted", "truncated", "seconds", "items/s"],
                [[r.label, r.model, r.encoded, r.reused, r.skipped, r.deleted, r.truncated, round(r.seconds, 1),
                  round(r.rate, 1)] for r in results])
    seconds = time.perf_counter() - t0
    total = sum(r.encoded for r in results)
    summary = {"engine": ctx.cfg.embed.engine, "full_refresh": ctx.full_refresh,
               "encoded": total, "reused": sum(r.reused for r in results),
               "skipped": sum(r.skipped for r in results), "deleted": sum(r.deleted for r in results),
               "items_per_s": round(total / seconds, 1) if seconds > 0 else 0.0,
               "text_model": f"{tspec.name}@{tspec.version}",
               "image_model": f"{ispec.name}@{ispec.version}" if ispec else None,
               "images": ("embedded" if ispec else "off (embed.embed_images is false)" if not ctx.cfg.embed.embed_images
                          else "skipped: no image tower registered (embed.images_optional)"),
               "tasks": {r.label: r.as_dict() for r in results}}
    log.info("embed: summary: encoded %d, reused %d, skipped %d, deleted %d in %.1fs (%.1f items/s)", total,
             summary["reused"], summary["skipped"], summary["deleted"], seconds, summary["items_per_s"])
    return summary
