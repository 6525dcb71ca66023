"""``mmpipeline bench score``: scoring throughput and stage wall time, per sample dataset (JSON).

For each dataset config (``--config FILE``, else ``configs/homedepot.yaml`` and ``configs/fashion.yaml``)
whose silver/gold tables and champion model exist, the score stage's computation runs in full
(query set, candidate generation, featurise + predict in batches, ranking, fused vectors) and its
output is written to a throw-away lake, so the dataset's own tables are not touched. Reported:
wall time per step, candidate pairs scored per second, candidate recall@K, and -- the plain
baseline in the same run -- the same model called once per query (no batching across queries) on
a sample of queries, as pairs per second and the batched/per-query ratio. ``dense_search`` shows
what exact whole-catalog search costs (why no ANN library is used at this scale).

Params: ``configs`` (list of config files), ``head_queries`` (query set size; default the
config's), ``baseline_queries`` (default 50), ``engine`` (local | spark), ``set`` (dict of dotted
config overrides, e.g. ``{score.candidates_k: 50}``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_DEFAULT_CONFIGS = ("configs/homedepot.yaml", "configs/fashion.yaml")


def _configs(cfg, params: dict[str, Any]):
    from mmpipeline.config import load_config

    overrides = {k: v for k, v in (params.get("set") or {}).items()}
    if params.get("configs"):
        paths = params["configs"] if isinstance(params["configs"], list) else [params["configs"]]
        return [load_config(p, overrides) for p in paths]
    if cfg is not None:
        for k, v in overrides.items():
            obj = cfg
            *parents, leaf = k.split(".")
            for part in parents:
                obj = getattr(obj, part)
            setattr(obj, leaf, v)
        return [cfg]
    repo = Path(__file__).resolve().parents[2]
    return [load_config(repo / p, overrides) for p in _DEFAULT_CONFIGS if (repo / p).is_file()]


def _missing(cfg) -> str | None:
    from mmpipeline.lake import Lake
    from mmpipeline.rank.registry import alias_version

    lake = Lake(cfg.lake.root, engine="delta-rs")
    for t in ("silver.products", "gold.product_embeddings"):
        if not lake.exists(t):
            return f"{t} does not exist under {cfg.lake.root} (run the pipeline up to embed first)"
    try:
        if alias_version(cfg, cfg.score.model_alias) is None:
            return f"no {cfg.mlflow.model_name}@{cfg.score.model_alias} in {cfg.mlflow.tracking_uri} (run train + evaluate)"
    except Exception as e:
        return f"MLflow registry not reachable: {e}"
    return None


def bench_dataset(cfg, params: dict[str, Any]) -> dict[str, Any]:
    import datetime as dt

    from mmpipeline.lake import Lake
    from mmpipeline.score import job
    from mmpipeline.score.scoring import load_ranker, make_featurizer, score_pairs

    if params.get("head_queries"):
        cfg.score.head_queries = int(params["head_queries"])
    engine = str(params.get("engine", cfg.score.engine))
    lake = Lake(cfg.lake.root, engine="delta-rs")
    spark = None
    if engine == "spark":
        from mmpipeline.spark import get_spark

        spark = get_spark(cfg)
    run_date = dt.date.today()
    t0 = time.perf_counter()
    res = job.compute(cfg, lake, run_date, cfg.score.model_alias, engine=engine, spark=spark, progress=False)
    compute_s = time.perf_counter() - t0
    ranking = res.ranking
    if engine == "spark":
        ranking = ranking.toPandas()
    with tempfile.TemporaryDirectory(prefix="mmp-bench-score-") as tmp:
        out = Lake(tmp, engine="delta-rs")
        t1 = time.perf_counter()
        out.write("gold.search_ranking", ranking, mode="overwrite", partition={"run_date": run_date})
        out.write("gold.product_vectors", res.vectors, mode="overwrite", partition={"run_date": run_date})
        write_s = time.perf_counter() - t1
    n_pairs = len(res.candidates)
    score_s = res.timings.get("score", 0.0)

    # plain baseline in the same run: one model call per query, on a sample of queries
    nb = int(params.get("baseline_queries", 50))
    sample_q = res.query_set["query_id"].head(nb)
    pairs = res.candidates[res.candidates["query_id"].isin(set(sample_q))]
    ranker = load_ranker(cfg, cfg.score.model_alias, expect_version=res.model_version)
    featurize = make_featurizer(cfg, lake)
    tb = time.perf_counter()
    for _, grp in pairs.groupby("query_id", sort=False):
        score_pairs(grp, featurize, ranker, batch_size=len(grp), progress=False)
    base_s = time.perf_counter() - tb
    tb = time.perf_counter()
    score_pairs(pairs, featurize, ranker, batch_size=cfg.score.batch_size, progress=False)
    batched_s = time.perf_counter() - tb
    base_pps = len(pairs) / base_s if base_s > 0 else None
    batched_pps = len(pairs) / batched_s if batched_s > 0 else None
    seconds = {k: round(v, 3) for k, v in res.timings.items()}
    seconds.update(write=round(write_s, 3), stage_total=round(compute_s + write_s, 3))
    return {
        "config": cfg.config_path, "engine": engine, "model": f"{res.model_name}/{res.model_version}",
        "products": int(len(res.vectors)), "queries": int(len(res.query_set)), "candidate_pairs": int(n_pairs),
        "pairs_per_query": round(n_pairs / max(len(res.query_set), 1), 1),
        "ranking_rows": int(len(ranking)), "candidate_recall": res.recall,
        "pairs_scored_per_second": round(n_pairs / score_s, 1) if score_s > 0 else None,
        "stage_seconds": seconds,
        "baseline_per_query_calls": {
            "queries": int(sample_q.size), "pairs": int(len(pairs)),
            "per_query_pairs_per_second": round(base_pps, 1) if base_pps else None,
            "batched_pairs_per_second": round(batched_pps, 1) if batched_pps else None,
            "batched_over_per_query": round(batched_pps / base_pps, 2) if base_pps and batched_pps else None,
        },
        "non_finite_scores": int((~np.isfinite(ranking["score"].to_numpy(np.float64))).sum()),
    }


def main(cfg=None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    params = dict(params or {})
    out: dict[str, Any] = {"bench": "score", "datasets": {}}
    for c in _configs(cfg, params):
        name = c.name
        reason = _missing(c)
        if reason:
            log.warning("bench score: %s skipped: %s", name, reason)
            out["datasets"][name] = {"skipped": reason}
            continue
        log.info("bench score: %s", name)
        out["datasets"][name] = bench_dataset(c, params)
    return out
