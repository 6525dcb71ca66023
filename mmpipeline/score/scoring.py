"""Scoring candidate pairs with the registered champion, in batches, locally or with Spark.

The model is the MLflow registered model ``cfg.mlflow.model_name`` under ``cfg.score.model_alias``
(default ``champion``). Its version is resolved once on the driver and pinned: every output row
carries that version, and Spark workers load exactly that version (once per Python worker, with the
featuriser and the saved candidate indexes: :func:`worker_state`) and refuse to score if the alias
moved to another version mid-run.

Model input comes from the ranker's featuriser (``mmpipeline.retrieval.features.PairFeaturizer``:
``from_lake(lake, cfg).transform(queries, query_ids, product_ids)``), the same code that built the
training data, so train/serve features cannot drift.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from mmpipeline.config import Config
from mmpipeline.context import StageError

log = logging.getLogger(__name__)

SCORED_COLUMNS = ["query_id", "query", "product_id", "candidate_source", "score"]


# ------------------------------------------------------------------------------------------ model


@dataclass
class Ranker:
    """A loaded ranking model pinned to one registered version."""

    name: str
    version: str
    run_id: str | None
    model: Any  # has .predict(pandas.DataFrame) -> array-like

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        out = self.model.predict(features)
        if isinstance(out, pd.DataFrame):
            out = out.iloc[:, 0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


def resolve_version(cfg: Config, alias: str) -> tuple[str, str, str | None]:
    """(model name, version, run id) currently behind ``alias``; StageError when there is none."""
    from mmpipeline.rank.registry import alias_version

    name = cfg.mlflow.model_name
    try:
        mv = alias_version(cfg, alias)
    except Exception as e:
        raise StageError(f"cannot reach the MLflow registry at {cfg.mlflow.tracking_uri}: {type(e).__name__}: {e}") from e
    if mv is None:
        raise StageError(f"no version of registered model {name!r} has alias {alias!r} in {cfg.mlflow.tracking_uri} "
                         "(run 'mmpipeline run train' and 'mmpipeline run evaluate' first; evaluate promotes a model "
                         "only when it beats the baselines and the champion, its reasons are in ops.rank_decisions)")
    return name, str(mv.version), mv.run_id


def load_ranker(cfg: Config, alias: str, expect_version: str | None = None) -> Ranker:
    """Load the registered version behind ``alias`` -- or exactly ``expect_version`` when given (the
    version resolved on the driver), after checking the alias still points at it."""
    from mmpipeline.rank.registry import load_version

    name, version, _ = resolve_version(cfg, alias)
    if expect_version is not None and version != str(expect_version):
        raise StageError(f"{name}@{alias} moved from version {expect_version} to {version} during the run; "
                         "re-run the score stage")
    try:
        loaded = load_version(cfg, version)
    except Exception as e:
        raise StageError(f"could not load models:/{name}/{version}: {type(e).__name__}: {e}") from e
    return Ranker(name, str(loaded.version), loaded.run_id, loaded)


# ------------------------------------------------------------------------------------- featurisers


class RankFeaturizer:
    """Model input for candidate rows through ``mmpipeline.retrieval.features.PairFeaturizer``."""

    def __init__(self, featurizer: Any):
        self.featurizer = featurizer

    def __call__(self, pairs: pd.DataFrame) -> pd.DataFrame:
        return self.featurizer.transform(list(pairs["query"]), list(pairs["query_id"]), list(pairs["product_id"]))


def make_query_encoder(cfg: Config, versions: set[str] | None = None) -> Callable[[list[str]], np.ndarray]:
    """The embed stage's text encoder as ``texts -> vectors`` (of one of the stored ``versions``), built on first use."""
    from mmpipeline.retrieval.encoder import query_encoder

    return query_encoder(cfg, versions)


def make_featurizer(cfg: Config, lake=None, bm25=None) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """``bm25``: the candidate generator's index over the same catalog text (not built twice)."""
    from mmpipeline.retrieval.features import PairFeaturizer

    if lake is None:
        from mmpipeline.lake import Lake

        lake = Lake(cfg.lake.root, engine="delta-rs")  # reads only (delta-rs), no Spark on workers
    try:
        fz = PairFeaturizer.from_lake(lake, cfg, query_encoder=make_query_encoder(cfg), bm25=bm25)
    except ValueError as e:
        raise StageError(f"cannot featurise candidates: {e}") from e
    return RankFeaturizer(fz)


# ------------------------------------------------------------------------------------------ local


def score_pairs(pairs: pd.DataFrame, featurize: Callable[[pd.DataFrame], pd.DataFrame], ranker: Ranker,
                batch_size: int, progress: bool = True, timings: dict[str, float] | None = None) -> pd.DataFrame:
    """Score ``pairs`` (candidate rows) in batches of ``batch_size``; adds a ``score`` column."""
    from tqdm.auto import tqdm

    timings = timings if timings is not None else {}
    scores = np.empty(len(pairs), dtype=np.float64)
    bs = max(1, int(batch_size))
    t_feat = t_pred = 0.0
    with tqdm(total=len(pairs), desc="scoring", unit="pair", disable=not progress or len(pairs) <= bs) as bar:
        for s in range(0, len(pairs), bs):
            chunk = pairs.iloc[s:s + bs]
            t0 = time.perf_counter()
            x = featurize(chunk)
            t1 = time.perf_counter()
            y = ranker.predict(x)
            t_pred += time.perf_counter() - t1
            t_feat += t1 - t0
            if len(y) != len(chunk):
                raise StageError(f"model {ranker.name} v{ranker.version} returned {len(y)} scores for {len(chunk)} pairs")
            scores[s:s + len(chunk)] = y
            bar.update(len(chunk))
    timings["featurize"] = timings.get("featurize", 0.0) + t_feat
    timings["predict"] = timings.get("predict", 0.0) + t_pred
    out = pairs[["query_id", "query", "product_id", "candidate_source"]].copy()
    out["score"] = scores
    return out


def rank_top(scored: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top ``k`` per query, ranks 1..n dense; ties (and non-finite scores, ranked last) by product id."""
    if not len(scored):
        return scored.assign(rank=pd.Series(dtype="int32"))
    s = scored.assign(_bad=~np.isfinite(scored["score"].to_numpy(np.float64)))
    s = s.sort_values(["query_id", "_bad", "score", "product_id"], ascending=[True, True, False, True],
                      kind="stable")
    s["rank"] = s.groupby("query_id", sort=False).cumcount().astype("int32") + 1
    return s[s["rank"] <= k].drop(columns="_bad").reset_index(drop=True)


# ------------------------------------------------------------------------------------------ spark


@dataclass
class WorkerState:
    """What one Python worker needs to retrieve and score: loaded once, reused by every partition."""

    ranker: Ranker
    featurize: Callable[[pd.DataFrame], pd.DataFrame]
    generator: Any  # CandidateGenerator over the saved index artifacts
    load_id: str
    seconds: float


def worker_state(cfg_json: str, alias: str, version: str, artifacts: dict[str, str],
                 versions: dict[str, int | None]) -> WorkerState:
    """The pinned model version, the featuriser (tables at the driver's ``versions``) and the
    candidate indexes (the driver's saved ``artifacts``), cached in this process keyed by all of them
    (:mod:`mmpipeline.retrieval.worker_state`: one stage's state per worker, so a worker that built
    training data drops that featuriser first): a worker that runs many partitions of a night loads
    them once."""
    import hashlib
    import json

    from mmpipeline.retrieval.worker_state import get_or_load

    key = "score:" + hashlib.sha256(json.dumps([cfg_json, alias, version, artifacts, versions], sort_keys=True,
                                               default=str).encode()).hexdigest()
    return get_or_load(key, lambda: _load_worker_state(cfg_json, alias, version, artifacts, versions))


def _load_worker_state(cfg_json: str, alias: str, version: str, artifacts: dict[str, str],
                       versions: dict[str, int | None]) -> WorkerState:
    import os
    import uuid

    from mmpipeline.config import Config as _Config
    from mmpipeline.lake import Lake
    from mmpipeline.retrieval.candidates import CandidateGenerator
    from mmpipeline.retrieval.features import PairFeaturizer

    t0 = time.perf_counter()
    cfg = _Config.model_validate_json(cfg_json)
    ranker = load_ranker(cfg, alias, expect_version=version)
    lake = Lake(cfg.lake.root, engine="delta-rs")  # reads only, pinned versions
    gen = CandidateGenerator.from_artifacts(artifacts, cfg.score.candidates_k, list(cfg.score.candidate_sources),
                                            cfg.score.query_batch_size)
    try:  # the featuriser's BM25 feature reads the same memory-mapped index (pages shared by the workers)
        fz = PairFeaturizer.from_lake(lake, cfg, query_encoder=make_query_encoder(cfg),
                                      versions={k: v for k, v in versions.items() if v is not None}, bm25=gen.bm25)
    except ValueError as e:
        raise StageError(f"cannot featurise candidates: {e}") from e
    st = WorkerState(ranker, RankFeaturizer(fz), gen, f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
                     time.perf_counter() - t0)
    log.info("score worker %d: loaded %s v%s, featuriser and indexes %s in %.1fs", os.getpid(), ranker.name,
             version, sorted(artifacts), st.seconds)
    return st


STATE_COLUMN = "_worker_state"


def _forget_query_scores(featurize: Any) -> None:
    """Drop the featuriser's per-query whole-catalog BM25 score rows (one float per product per
    query) once a block of queries is scored: a worker keeps one block's rows, not thousands."""
    cache = getattr(getattr(featurize, "featurizer", None), "_bm25_cache", None)
    if cache is not None:
        cache.clear()


def score_queries_spark(spark, queries: pd.DataFrame, query_vectors: Any, cfg: Config, alias: str, version: str,
                        artifacts: dict[str, str], versions: dict[str, int | None], partitions: int | None = None):
    """Retrieve and score on Spark, partitioned by query: a DataFrame of the query set (with each
    query's vector) is split by ``query_id``; each partition generates its queries' candidates from
    the saved indexes and scores them with the pinned model (:func:`worker_state`: loaded once per
    Python worker). Returns the Spark DataFrame of scored pairs (``SCORED_COLUMNS`` plus
    ``STATE_COLUMN``, the id of the worker state that scored the row); the driver never holds pairs."""
    from pyspark.sql import types as T

    cfg_json = cfg.model_dump_json()
    batch_size = cfg.score.batch_size
    qblock = max(1, int(cfg.score.query_batch_size))
    schema_in = T.StructType([T.StructField("query_id", T.StringType()), T.StructField("query", T.StringType()),
                              T.StructField("vector", T.ArrayType(T.FloatType()))])
    schema_out = T.StructType([T.StructField(c, T.StringType()) for c in SCORED_COLUMNS[:4]]
                              + [T.StructField("score", T.DoubleType()), T.StructField(STATE_COLUMN, T.StringType())])
    pos = query_vectors.pos if len(query_vectors) else {}
    rows = [pos.get(q, -1) for q in queries["query_id"]]
    pdf = pd.DataFrame({"query_id": queries["query_id"].astype(str).to_numpy(object),
                        "query": queries["query"].astype(str).to_numpy(object),
                        "vector": [query_vectors.matrix[r].astype(np.float32).tolist() if r >= 0 else None
                                   for r in rows]})
    n_parts = partitions or cfg.score.spark_partitions or spark.sparkContext.defaultParallelism
    sdf = spark.createDataFrame(pdf, schema=schema_in).repartition(max(1, int(n_parts)), "query_id")

    def _score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from mmpipeline.retrieval.dense import Vectors as _Vectors
        from mmpipeline.score import scoring as _scoring  # the worker's module: its cache survives tasks

        st = None
        for batch in batches:
            if not len(batch):
                continue
            if st is None:  # only for a partition with rows; cached across partitions
                st = _scoring.worker_state(cfg_json, alias, version, artifacts, versions)
            for s in range(0, len(batch), qblock):  # bounded: one block's pairs and BM25 rows at a time
                block = batch.iloc[s:s + qblock]
                has = block["vector"].notna().to_numpy()
                qids = block["query_id"].to_numpy(object)
                qv = (_Vectors(qids[has], np.stack([np.asarray(v, np.float32) for v in block["vector"][has]]))
                      if has.any() else _Vectors.empty())
                cands = st.generator.generate(block[["query_id", "query"]], qv, progress=False)
                if not len(cands):
                    continue
                out = _scoring.score_pairs(cands, st.featurize, st.ranker, batch_size, progress=False)[SCORED_COLUMNS]
                _forget_query_scores(st.featurize)
                out[STATE_COLUMN] = st.load_id
                yield out

    return sdf.mapInPandas(_score_partition, schema=schema_out)


def rank_spark(scored, k: int):
    """Top ``k`` per query of a Spark DataFrame of scored pairs (the order of :func:`rank_top`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    bad = F.isnan(F.col("score")) | F.col("score").isNull() | (F.abs(F.col("score")) == float("inf"))
    w = Window.partitionBy("query_id").orderBy(bad.asc(), F.col("score").desc(), F.col("product_id").asc())
    return scored.withColumn("rank", F.row_number().over(w).cast("int")).where(F.col("rank") <= k)
