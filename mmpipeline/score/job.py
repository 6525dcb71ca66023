"""The score stage: query set -> whole-catalog candidates -> champion scores -> gold tables.

``run(ctx)`` reads silver.products / queries / judgments / interactions and gold.*_embeddings,
and writes, for ``ctx.run_date``:

* ``gold.search_ranking``: top ``score.output_k`` products per query with score, rank, model name and
  version and the retrieval sources that proposed each product;
* ``gold.product_vectors``: one fused vector per product (see :mod:`mmpipeline.score.vectors`), merged
  by content hash (:func:`merge_product_vectors`: only new / changed / vanished products are written);
* ``gold.search_duplicates``: with ``score.collapse_duplicates`` (default), the products hidden because
  a near-duplicate (same normalised title and image) ranks above them (:mod:`mmpipeline.score.dedupe`);
* ``ops.score_runs``: sizes, candidate recall@K against the judgments, stage timings.

``gold.search_ranking`` is overwritten by run-date partition in one commit, so re-running a date
gives the same rows and never duplicates; a re-run leaves ``gold.product_vectors`` at its version.

Engines: ``local`` generates the candidates and scores them in this process; ``spark`` distributes
the query set (:func:`mmpipeline.score.scoring.score_queries_spark`): the driver builds or loads the
nightly FAISS / BM25 index artifacts, and each Python worker loads them, the pinned model version
and the featuriser once, then retrieves and scores its queries; only the judged pairs among the
candidates (for candidate recall) come back to the driver. Both give the same rows.
Publishing is a separate stage (``publish``).
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mmpipeline.config import Config
from mmpipeline.context import RunContext, StageError
from mmpipeline.retrieval.ann import AnnStore
from mmpipeline.retrieval.candidates import CandidateGenerator, candidate_recall
from mmpipeline.retrieval.dense import Vectors
from mmpipeline.retrieval.embeddings import load_vectors
from mmpipeline.retrieval.text import product_text
from mmpipeline.score.dedupe import DUPLICATE_COLUMNS, DUPLICATES, collapse, collapse_spark, duplicate_groups
from mmpipeline.score.queries import add_voice_queries, build_query_set, read_query_list
from mmpipeline.score.scoring import (STATE_COLUMN, load_ranker, make_featurizer, make_query_encoder, rank_spark,
                                      rank_top, resolve_version, score_pairs, score_queries_spark)
from mmpipeline.score.vectors import fuse_product_vectors

log = logging.getLogger(__name__)

RANKING = "gold.search_ranking"
VECTORS = "gold.product_vectors"
# silver.products columns the stage reads: BM25 text and the duplicate key (title + image hash)
PRODUCT_COLUMNS = ["product_id", "title", "brand", "category_path", "description", "image_hash"]


# ------------------------------------------------------------------------------------------ inputs


def _read(lake, name: str, columns: list[str] | None = None, filters=None) -> pd.DataFrame | None:
    if not lake.exists(name):
        return None
    return lake.read_pandas(name, columns=columns, filters=filters)


@dataclass
class ScoreInputs:
    products: pd.DataFrame
    queries: pd.DataFrame | None
    judgments: pd.DataFrame | None
    interactions: pd.DataFrame | None
    text: Vectors
    image: Vectors
    query_text: Vectors
    versions: dict[str, int | None] = field(default_factory=dict)  # table versions read (workers pin them)


def load_inputs(lake, cfg: Config) -> ScoreInputs:
    versions = {n: lake.version(n) for n in ("silver.products", "gold.product_embeddings", "gold.query_embeddings")}
    # only the columns retrieval (BM25 text) and the near-duplicate key use: not the attributes, images, ...
    products = _read(lake, "silver.products", PRODUCT_COLUMNS)
    if products is None or not len(products):
        raise StageError("silver.products is missing or empty: run ingest and clean first")
    products = products.drop_duplicates("product_id").sort_values("product_id", kind="stable").reset_index(drop=True)
    queries = _read(lake, "silver.queries", ["query_id", "query_norm", "frequency"])
    judgments = _read(lake, "silver.judgments", ["query_id", "query_norm", "product_id", "grade"])
    interactions = _read(lake, "silver.interactions", ["query_id", "query_norm", "session_id"])
    # the same models the ranker's featuriser uses (cfg.rank.*_model_name, else the most common)
    text = load_vectors(lake, "gold.product_embeddings", "product_id", "text", cfg.rank.text_model_name)
    image = load_vectors(lake, "gold.product_embeddings", "product_id", "image", cfg.rank.image_model_name)
    qtext = load_vectors(lake, "gold.query_embeddings", "query_id", "text", cfg.rank.text_model_name,
                         model_name=text.model_name if len(text) else None)
    log.info("inputs: %d products, %s queries, %s judgments, %s interactions; vectors: text %d (%s), "
             "image %d (%s), query %d", len(products), _n(queries), _n(judgments), _n(interactions),
             len(text), text.model_name, len(image), image.model_name, len(qtext))
    return ScoreInputs(products, queries, judgments, interactions, text, image, qtext, versions)


def _n(df: pd.DataFrame | None) -> int | str:
    return "no" if df is None else len(df)


def encode_missing_queries(cfg: Config, query_set: pd.DataFrame, qvec: Vectors, lake=None) -> Vectors:
    """Encode queries of the set without a stored vector (e.g. from the explicit list) with the embed
    stage's text encoder; if that fails they get BM25 candidates only (never a failed nightly run)."""
    missing = query_set[~query_set["query_id"].isin(qvec.pos)]
    if not len(missing) or not len(qvec):
        return qvec
    try:
        versions = None  # the query must be encoded by the model version of the stored vectors
        if lake is not None and lake.exists("gold.query_embeddings"):
            versions = set(lake.read_arrow("gold.query_embeddings", columns=["model_version"],
                                           filters=[("modality", "=", "text"), ("model_name", "=", qvec.model_name)])
                           .column("model_version").to_pylist())
        mat = make_query_encoder(cfg, versions)(list(missing["query"]))
    except Exception as e:
        log.warning("could not encode %d queries without stored vectors (%s: %s); BM25 candidates only for them",
                    len(missing), type(e).__name__, str(e)[:200])
        return qvec
    if mat.ndim != 2 or mat.shape[1] != qvec.dim:
        log.warning("query encoder gives dim %s, stored query vectors %d; ignoring", mat.shape, qvec.dim)
        return qvec
    log.info("encoded %d queries without stored vectors", len(missing))
    return Vectors(np.concatenate([qvec.ids, missing["query_id"].to_numpy(object)]),
                   np.vstack([qvec.matrix, mat]), qvec.model_name)


# --------------------------------------------------------------------------------------- pipeline


@dataclass
class ScoreResult:
    query_set: pd.DataFrame
    candidates: pd.DataFrame | None  # None on the spark engine (the pairs never reach the driver)
    ranking: Any  # pandas (local) or Spark DataFrame (spark engine)
    vectors: pd.DataFrame
    recall: dict[str, Any]
    model_name: str
    model_version: str
    model_run_id: str | None
    timings: dict[str, float] = field(default_factory=dict)
    n_pairs: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    duplicates: Any = None  # pandas or Spark rows for gold.search_duplicates; None when collapse is off
    cached: list = field(default_factory=list)  # Spark DataFrames to unpersist once written


def compute(cfg: Config, lake, run_date: dt.date, alias: str, engine: str | None = None, spark=None,
            progress: bool = True, ann_store: AnnStore | None = None) -> ScoreResult:
    """Everything the stage computes, without writing its gold tables (the benchmark times this too);
    the dense candidate index is saved to ``ann_store`` (default ``<lake>/_artifacts/ann`` when
    ``score.ann.save``) and recorded in ``ops.retrieval_indexes``."""
    sc = cfg.score
    engine = engine or sc.engine
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # resolve the model first: no point generating candidates when there is no champion
    name, version, run_id = resolve_version(cfg, alias)
    inputs = load_inputs(lake, cfg)
    explicit = read_query_list(sc.query_list) if sc.query_list else None
    qset = build_query_set(sc.head_queries, inputs.queries, inputs.judgments, inputs.interactions, explicit)
    qset = add_voice_queries(qset, _read(lake, "gold.voice_transcripts", ["query_id", "query_text", "usable"]),
                             _voice_ids(lake))
    if not len(qset):
        raise StageError("empty query set: no queries in silver.queries / judgments / interactions and no score.query_list")
    qvec = encode_missing_queries(cfg, qset, inputs.query_text, lake)
    timings["load_inputs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    store = ann_store or (AnnStore.for_lake(lake) if sc.ann.save or engine == "spark" else None)
    gen = CandidateGenerator(inputs.products["product_id"].to_numpy(object), product_text(inputs.products),
                             inputs.text, inputs.image, k=sc.candidates_k, sources=list(sc.candidate_sources),
                             query_batch_size=sc.query_batch_size, ann=sc.ann, run_date=run_date,
                             store=store, tune_vectors=qvec.matrix if len(qvec) else None)
    timings.update({f"candidates_{k}": v for k, v in gen.timings.items()})
    stats: dict[str, Any] = {}
    groups = duplicate_groups(inputs.products, sc.collapse_key) if sc.collapse_duplicates else None
    if groups is not None:
        log.info("near-duplicate collapse: %d products in %d groups (key %s)", len(groups),
                 groups["group_id"].nunique(), sc.collapse_key)
    dups, cached = None, []
    if engine == "spark":
        # retrieval and scoring partitioned by query on the executors (indexes from the saved artifacts)
        spark = spark or lake.spark
        if spark is None:
            from mmpipeline.spark import get_spark

            spark = get_spark(cfg)
        cands = None
        timings["candidates"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats["artifacts"] = gen.artifacts()
        scored = score_queries_spark(spark, qset, qvec, cfg, alias, version, stats["artifacts"], inputs.versions).persist()
        n_pairs = scored.count()  # materialise here so the timing covers retrieval + scoring
        stats["worker_state_loads"] = scored.select(STATE_COLUMN).distinct().count()
        recall = _spark_recall(spark, scored, inputs.judgments, sc.candidates_k, sc.recall_min_grade)
        if groups is None:
            ranked = rank_spark(scored.drop(STATE_COLUMN), sc.output_k)
        else:  # every candidate is scored once (persisted); keep one product per duplicate group, cut to output_k
            ranked, dups = collapse_spark(spark, scored.drop(STATE_COLUMN), groups, sc.output_k)
            dups = dups.withColumn("run_date", _lit_date(run_date))
        ranked = ranked.withColumns({"run_date": _lit_date(run_date), "model_name": _lit(name),
                                     "model_version": _lit(version)})
        voice_ids = sorted(qset.loc[qset["modality"] == "voice", "query_id"])
        ranked = ranked.withColumn("modality", _modality_col(voice_ids)).cache()
        n = ranked.count()
        cached.append(scored)  # the duplicates are written from it after the ranking: unpersisted then
        log.info("scored on spark: %d candidate pairs, %d ranked rows; worker states loaded: %d",
                 n_pairs, n, stats["worker_state_loads"])
    else:
        cands = gen.generate(qset, qvec, progress=progress)
        n_pairs = len(cands)
        timings.update({f"candidates_{k}": v for k, v in gen.timings.items()})
        timings["candidates"] = time.perf_counter() - t0
        recall = candidate_recall(cands, inputs.judgments, sc.candidates_k, sc.recall_min_grade)
        t0 = time.perf_counter()
        ranker = load_ranker(cfg, alias, expect_version=version)
        featurize = make_featurizer(cfg, lake, bm25=gen.bm25)
        scored = score_pairs(cands, featurize, ranker, sc.batch_size, progress=progress, timings=timings)
        if groups is None:
            ranked = rank_top(scored, sc.output_k)
        else:
            ranked, dups = collapse(scored, groups, sc.output_k)
            dups.insert(0, "run_date", run_date)
        ranked.insert(0, "run_date", run_date)
        ranked["model_name"], ranked["model_version"] = name, version
        ranked["modality"] = ranked["query_id"].map(dict(zip(qset["query_id"], qset["modality"]))).fillna("text")
    log.info("candidate recall@%d vs judgments: %s", sc.candidates_k, recall)
    timings["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # the indexes (an IVF index holds every vector again) and the duplicate groups are done with: free them
    # before the fused vectors are made (the driver's peak at 1M products was here)
    product_ids = inputs.products["product_id"].to_numpy(object)
    del gen, groups
    inputs.products = inputs.products.iloc[:0]
    gc.collect()
    vectors = fuse_product_vectors(product_ids, inputs.text, inputs.image, sc.fusion_weights)
    vectors.insert(0, "run_date", run_date)
    timings["product_vectors"] = time.perf_counter() - t0
    return ScoreResult(qset, cands, ranked, vectors, recall, name, version, run_id, timings, n_pairs, stats, dups,
                       cached)


# ------------------------------------------------------------------------------ product vectors


def vector_hashes(vectors: pd.DataFrame) -> np.ndarray:
    """sha256 (32 hex) per row of fused product vectors: the vector's float32 bytes and how it was
    made (modalities, fusion, models, dim); the run date is not part of it."""
    import hashlib

    out = np.empty(len(vectors), dtype=object)
    meta = vectors[["modalities", "fusion", "text_model", "image_model", "dim"]].astype(str).agg("|".join, axis=1)
    for i, (m, v) in enumerate(zip(meta.to_numpy(), vectors["vector"].to_numpy())):
        h = hashlib.sha256(m.encode("utf-8"))
        h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
        out[i] = h.hexdigest()[:32]
    return out


def merge_product_vectors(lake, vectors: pd.DataFrame, run_date: dt.date,
                          metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bring ``gold.product_vectors`` (one row per product) to ``vectors`` by content hash, in one
    commit: new products inserted, products whose vector changed updated (their ``run_date`` becomes
    this run's), vanished products deleted, unchanged rows untouched. When nothing changed no commit
    is made (a re-run of a date writes no new version). A table in the old layout (one full copy per
    run-date partition) is rewritten once in the new layout."""
    from deltalake import DeltaTable, write_deltalake

    from mmpipeline.lake import _rs_engine, conform_arrow
    from mmpipeline.schemas import table

    spec = table(VECTORS)
    new = vectors.drop(columns=[c for c in ("run_date",) if c in vectors.columns]).copy()
    new["content_hash"] = vector_hashes(new)
    uri = lake.uri(VECTORS)
    stats = {"products": len(new), "inserted": 0, "updated": 0, "deleted": 0, "unchanged": 0, "committed": False}
    old_layout = lake.exists(VECTORS) and list(DeltaTable(uri).metadata().partition_columns) != list(spec.partition_by)
    if not lake.exists(VECTORS) or old_layout:
        if old_layout:
            log.warning("%s is in the old per-run-date layout: rewriting it once as one row per product", VECTORS)
        data = conform_arrow(new.assign(run_date=run_date), spec)
        Path(uri).mkdir(parents=True, exist_ok=True)
        write_deltalake(uri, data, mode="overwrite", schema_mode="overwrite" if old_layout else None,
                        partition_by=list(spec.partition_by), commit_properties=_rs_engine._commit_props(metadata))
        stats.update(inserted=len(new), committed=True, version=DeltaTable(uri).version())
        return stats
    cur = lake.read_arrow(VECTORS, columns=["product_id", "content_hash"]).to_pandas()
    known = dict(zip(cur["product_id"], cur["content_hash"]))
    old_hash = new["product_id"].map(known)
    is_new = old_hash.isna().to_numpy()
    changed = (~is_new) & (old_hash.to_numpy(object) != new["content_hash"].to_numpy(object))
    gone = sorted(set(known) - set(new["product_id"]))
    stats.update(inserted=int(is_new.sum()), updated=int(changed.sum()), deleted=len(gone),
                 unchanged=int(len(new) - is_new.sum() - changed.sum()))
    if not (is_new.any() or changed.any() or gone):
        stats["version"] = lake.version(VECTORS)
        log.info("%s: all %d product vectors unchanged; no commit", VECTORS, len(new))
        return stats
    diff = conform_arrow(new[is_new | changed].assign(run_date=run_date), spec)
    diff = diff.append_column("_delete", pa.array([False] * diff.num_rows))
    if gone:
        dead = pa.table({c: pa.nulls(len(gone), diff.schema.field(c).type) for c in spec.column_names})
        dead = dead.set_column(dead.schema.get_field_index("product_id"), "product_id", pa.array(gone, pa.string()))
        diff = pa.concat_tables([diff, dead.append_column("_delete", pa.array([True] * len(gone)))])
    (DeltaTable(uri).merge(diff, predicate="t.product_id = s.product_id", source_alias="s", target_alias="t",
                           commit_properties=_rs_engine._commit_props(metadata))
     .when_matched_delete(predicate="s._delete")
     .when_matched_update_all(predicate="NOT s._delete", except_cols=["_delete"])
     .when_not_matched_insert_all(predicate="NOT s._delete", except_cols=["_delete"])
     .execute())
    stats.update(committed=True, version=lake.version(VECTORS))
    log.info("%s: %s", VECTORS, stats)
    return stats


def _spark_recall(spark, scored, judgments: pd.DataFrame | None, k: int, min_grade: float | None) -> dict[str, Any]:
    """:func:`candidate_recall` of the Spark scored pairs, collecting only the judged pairs among them,
    the ids of the queries with candidates and the source labels (never the pairs themselves)."""
    from pyspark.sql import functions as F

    qids = [r[0] for r in scored.select("query_id").distinct().collect()]
    srcs = [r[0] for r in scored.select("candidate_source").distinct().collect()]
    if judgments is None or not len(judgments) or not qids:
        return candidate_recall(pd.DataFrame(columns=["query_id", "product_id", "candidate_source"]), judgments, k,
                                min_grade)
    jp = judgments[judgments["query_id"].isin(set(qids))][["query_id", "product_id"]].drop_duplicates()
    hits = pd.DataFrame(columns=["query_id", "product_id", "candidate_source"])
    if len(jp):
        jdf = spark.createDataFrame(jp.astype(str))
        hits = (scored.select("query_id", "product_id", "candidate_source").join(F.broadcast(jdf), ["query_id", "product_id"])
                .toPandas())
    # one placeholder row per query with candidates (no product): the same query set and sources as locally
    marks = pd.DataFrame({"query_id": qids, "product_id": "\x00", "candidate_source": "+".join(srcs)})
    return candidate_recall(pd.concat([hits, marks], ignore_index=True), judgments, k, min_grade)


def _voice_ids(lake) -> set[str] | None:
    """Ids of the current voice queries (silver.voice_queries); None when there is no such table."""
    v = _read(lake, "silver.voice_queries", ["query_id"])
    return None if v is None else set(v["query_id"])


def _modality_col(voice_ids: list[str]):
    from pyspark.sql import functions as F

    if not voice_ids:
        return F.lit("text")
    return F.when(F.col("query_id").isin(voice_ids), F.lit("voice")).otherwise(F.lit("text"))


def _lit(v):
    from pyspark.sql import functions as F

    return F.lit(v)


def _lit_date(d: dt.date):
    from pyspark.sql import functions as F

    return F.lit(d).cast("date")


def _ranking_stats(ranked) -> tuple[int, int]:
    """(rows, non-finite scores) of a pandas or Spark ranking."""
    if isinstance(ranked, pd.DataFrame):
        return len(ranked), int((~np.isfinite(ranked["score"].to_numpy(np.float64))).sum())
    from pyspark.sql import functions as F

    bad = F.isnan("score") | F.col("score").isNull() | (F.abs("score") == float("inf"))
    row = ranked.agg(F.count(F.lit(1)).alias("n"), F.sum(bad.cast("long")).alias("bad")).collect()[0]
    return int(row["n"]), int(row["bad"] or 0)


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, sc = ctx.cfg, ctx.cfg.score
    alias = ctx.model_alias or sc.model_alias
    engine = str(ctx.options.get("engine", sc.engine))
    t_start = time.perf_counter()
    lake = ctx.spark_lake() if engine == "spark" else ctx.lake
    res = compute(cfg, lake, ctx.run_date, alias, engine=engine)
    rows, non_finite = _ranking_stats(res.ranking)
    if non_finite:
        log.warning("score: %d of %d ranked rows have non-finite scores (publish will refuse this run)",
                    non_finite, rows)

    t0 = time.perf_counter()
    part = {"run_date": ctx.run_date}
    meta = {"stage": "score", "model": f"{res.model_name}/{res.model_version}"}
    ranking_version = lake.write(RANKING, res.ranking, mode="overwrite", partition=part, metadata=meta)
    vec_stats = merge_product_vectors(ctx.lake, res.vectors, ctx.run_date, metadata=meta)
    vectors_version = vec_stats["version"]
    dups = res.duplicates
    if dups is None:  # collapse off: clear what an earlier run of the date recorded
        dups = pd.DataFrame({"run_date": pd.Series([], dtype=object),
                             **{c: pd.Series([], dtype=object) for c in DUPLICATE_COLUMNS}})
    lake.write(DUPLICATES, dups, mode="overwrite", partition=part, metadata=meta)
    n_dups = len(dups) if isinstance(dups, pd.DataFrame) else ctx.lake.count(DUPLICATES, filters=[("run_date", "=", ctx.run_date)])
    for df in ([] if isinstance(res.ranking, pd.DataFrame) else [res.ranking]) + res.cached:
        df.unpersist()
    res.timings["write"] = time.perf_counter() - t0
    res.timings["total"] = time.perf_counter() - t_start
    n_pairs = res.n_pairs
    scoring_s = res.timings.get("score", 0.0)
    pps = n_pairs / scoring_s if scoring_s > 0 else None
    ctx.lake.merge("ops.score_runs", pd.DataFrame([{
        "run_date": ctx.run_date, "model_name": res.model_name, "model_version": res.model_version,
        "model_run_id": res.model_run_id, "engine": engine, "queries": len(res.query_set),
        "candidate_pairs": n_pairs, "rows_written": rows, "products_vectors": len(res.vectors),
        "non_finite_scores": non_finite, "candidate_recall": json.dumps(res.recall),
        "stage_seconds": json.dumps({k: round(v, 3) for k, v in res.timings.items()}),
        "pairs_per_second": pps, "ranking_version": ranking_version,
        "scored_at": dt.datetime.now(dt.timezone.utc),
    }]))
    from mmpipeline.ops import print_table

    print_table(f"score: {ctx.run_date} with {res.model_name} v{res.model_version} ({engine})",
                ["step", "value"],
                [["queries", len(res.query_set)], ["candidate pairs", n_pairs],
                 ["pairs / query", round(n_pairs / max(len(res.query_set), 1), 1)],
                 [f"candidate recall@{sc.candidates_k} (union)", res.recall.get("recall_at_k_union", "n/a")],
                 *[[f"  recall@{sc.candidates_k} {m} only", res.recall.get(f"recall_at_k_{m}") if res.recall.get(f"recall_at_k_{m}") is not None else "n/a"]
                   for m in ("text", "image", "bm25")],
                 [f"{RANKING} rows (top {sc.output_k})", rows], ["non-finite scores", non_finite],
                 [f"{VECTORS} rows", len(res.vectors)],
                 ["pairs scored / s", round(pps, 1) if pps else "n/a"],
                 *[[f"seconds: {k}", round(v, 2)] for k, v in res.timings.items()]])
    return {"queries": len(res.query_set), "candidate_pairs": n_pairs, "ranking_rows": rows,
            "non_finite_scores": non_finite, "product_vectors": len(res.vectors), "duplicates_collapsed": n_dups,
            "model": f"{res.model_name}/{res.model_version}", "candidate_recall": res.recall,
            **{k: v for k, v in res.stats.items() if k != "artifacts"},
            "pairs_per_second": round(pps, 1) if pps else None, "ranking_version": ranking_version,
            "vectors_version": vectors_version,
            "product_vectors_merge": {k: v for k, v in vec_stats.items() if k != "version"}, "seconds_by_step": {k: round(v, 2) for k, v in res.timings.items()}}
