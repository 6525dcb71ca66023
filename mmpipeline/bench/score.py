"""``mmpipeline bench score``: scoring throughput and stage wall time, per sample dataset (JSON).

For each dataset config (``--config FILE``, else ``configs/homedepot.yaml`` and ``configs/fashion.yaml``)
whose silver/gold tables and champion model exist, the score stage's computation runs in full
(query set, candidate generation, featurise + predict in batches, ranking, fused vectors) and its
output is written to a throw-away lake, so the dataset's own tables are not touched. Reported:
wall time per step, candidate pairs scored per second, candidate recall@K, and -- the plain
baseline in the same run -- the same model called once per query (no batching across queries) on
a sample of queries, as pairs per second and the batched/per-query ratio.

``ann``: the dense candidate index per modality: the one the run used (``score.ann``; exact below
``score.ann.exact_below``) and, on the same catalog vectors, each approximate kind (IVF, HNSW) tuned
on half of the query set's vectors and measured on the other half: recall@K against exact search
(the target is ``score.ann.target_recall``), build and search seconds. ``ann_products=N`` also
measures the approximate index on a synthetic catalog of N vectors (the real vectors repeated with
small Gaussian noise, so the catalog keeps its topic structure) against exact search.

Params: ``configs`` (list of config files), ``head_queries`` (query set size; default the
config's), ``baseline_queries`` (default 50), ``engine`` (local | spark), ``set`` (dict of dotted
config overrides, e.g. ``{score.candidates_k: 50}``), ``ann_products`` (synthetic catalog size,
default none), ``ann_kinds`` (default ``ivf,hnsw``).
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
    from mmpipeline.retrieval.ann import AnnStore

    run_date = dt.date.today()
    with tempfile.TemporaryDirectory(prefix="mmp-bench-score-") as tmp:
        out = Lake(tmp, engine="delta-rs")  # index artifacts and tables go here, not into the dataset's lake
        t0 = time.perf_counter()
        res = job.compute(cfg, lake, run_date, cfg.score.model_alias, engine=engine, spark=spark, progress=False,
                          ann_store=AnnStore.for_lake(out))
        compute_s = time.perf_counter() - t0
        ranking = res.ranking
        if engine == "spark":
            ranking = ranking.toPandas()
        ann_used = out.read_pandas("ops.retrieval_indexes").to_dict("records") if out.exists("ops.retrieval_indexes") else []
        t1 = time.perf_counter()
        out.write("gold.search_ranking", ranking, mode="overwrite", partition={"run_date": run_date})
        job.merge_product_vectors(out, res.vectors, run_date)
        write_s = time.perf_counter() - t1
    n_pairs = res.n_pairs
    score_s = res.timings.get("score", 0.0)

    # plain baseline in the same run: one model call per query, on a sample of queries (the local
    # engine's candidates; on the spark engine the pairs stay on the executors and are drawn again here)
    nb = int(params.get("baseline_queries", 50))
    sample_q = res.query_set["query_id"].head(nb)
    pairs = res.candidates
    if pairs is None:
        from mmpipeline.retrieval.candidates import CandidateGenerator
        from mmpipeline.retrieval.embeddings import load_vectors

        gen = CandidateGenerator.from_artifacts(res.stats.get("artifacts", {}), cfg.score.candidates_k,
                                                list(cfg.score.candidate_sources), cfg.score.query_batch_size)
        qv = load_vectors(lake, "gold.query_embeddings", "query_id", "text", cfg.rank.text_model_name)
        pairs = gen.generate(res.query_set[res.query_set["query_id"].isin(set(sample_q))], qv, progress=False)
    pairs = pairs[pairs["query_id"].isin(set(sample_q))]
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
        "ann": ann_report(cfg, lake, res, ann_used, params),
    }


def _ann_kinds(params: dict[str, Any]) -> list[str]:
    kinds = params.get("ann_kinds", "ivf,hnsw")
    return [k.strip() for k in (kinds if isinstance(kinds, list) else str(kinds).split(",")) if k.strip()]


def _measure(kind: str, ids: np.ndarray, base: np.ndarray, tune_q: np.ndarray, test_q: np.ndarray, cfg) -> dict[str, Any]:
    """Build ``kind`` over ``base`` (tuned on ``tune_q``) and measure recall@K on ``test_q`` vs exact."""
    from mmpipeline.retrieval.ann import AnnIndex, exact_topk, recall_at_k
    from mmpipeline.retrieval.dense import normalize

    ann = cfg.score.ann.model_copy(update={"kind": kind})
    k = min(int(ann.tune_k), len(base))
    t0 = time.perf_counter()
    ix = AnnIndex.build(ids, base, ann, tune_q)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    truth = exact_topk(normalize(base), normalize(test_q), k)
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, _ = ix.search_rows(test_q, k)
    search_s = time.perf_counter() - t0
    return {"kind": ix.kind, "params": ix.params, f"recall_at_{k}_vs_exact": round(recall_at_k(rows, truth), 4),
            "tuning_recall": ix.info.get("recall"), "test_queries": int(len(test_q)),
            "build_seconds": round(build_s, 3), "search_seconds": round(search_s, 4),
            "exact_search_seconds": round(exact_s, 4)}


def _plain(v: Any) -> Any:
    """JSON-safe scalar: NaN / None -> None, numpy numbers -> Python."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def ann_report(cfg, lake, res, ann_used: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """Recall@K of approximate dense search against exact search on this dataset's vectors."""
    from mmpipeline.retrieval.embeddings import load_vectors

    sc = cfg.score
    out: dict[str, Any] = {"target_recall": sc.ann.target_recall, "k": sc.ann.tune_k,
                           "used": [{k: _plain(v) for k, v in r.items()
                                     if k in ("modality", "model_name", "kind", "params", "vectors", "recall", "recall_k",
                                              "build_seconds")} for r in ann_used]}
    qvec = load_vectors(lake, "gold.query_embeddings", "query_id", "text", cfg.rank.text_model_name)
    qvec = qvec.restrict(set(res.query_set["query_id"])) if len(qvec) else qvec
    if len(qvec) < 4:
        out["skipped"] = "fewer than 4 query vectors"
        return out
    rng = np.random.default_rng(0)
    order = rng.permutation(len(qvec))
    tune_q, test_q = qvec.matrix[order[: len(order) // 2]], qvec.matrix[order[len(order) // 2:]]
    for modality in ("text", "image"):
        if modality not in sc.candidate_sources:
            continue
        v = load_vectors(lake, "gold.product_embeddings", "product_id", modality,
                         getattr(cfg.rank, f"{modality}_model_name"))
        v = v.restrict(set(res.vectors["product_id"])) if len(v) else v
        if len(v) < 2 or v.dim != qvec.dim:
            continue
        out[modality] = {"vectors": len(v), "dim": v.dim,
                         "kinds": [_measure(kind, v.ids, v.matrix, tune_q, test_q, cfg) for kind in _ann_kinds(params)]}
        n_syn = int(params.get("ann_products") or 0)
        if n_syn and modality == "text":
            out[modality]["synthetic"] = _synthetic(v, n_syn, tune_q, test_q, cfg, params)
    return out


def _synthetic(v, n: int, tune_q: np.ndarray, test_q: np.ndarray, cfg, params: dict[str, Any]) -> dict[str, Any]:
    """The approximate index on ``n`` vectors: the real ones repeated with Gaussian noise (sd 0.3 of
    a coordinate's spread), as a larger catalog with the same topics."""
    from mmpipeline.retrieval.dense import normalize

    rng = np.random.default_rng(1)
    base = normalize(v.matrix)
    rows = np.concatenate([np.arange(len(base)), rng.integers(0, len(base), max(0, n - len(base)))])[:n]
    sd = 0.3 * float(base.std())
    x = np.empty((n, base.shape[1]), np.float32)
    for s in range(0, n, 65536):
        r = rows[s:s + 65536]
        x[s:s + len(r)] = base[r] + rng.normal(0, sd, (len(r), base.shape[1])).astype(np.float32)
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    return {"vectors": n, "kinds": [_measure(kind, ids, x, tune_q, test_q, cfg) for kind in _ann_kinds(params)]}


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
