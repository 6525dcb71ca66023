"""Ranking metrics.

* :func:`mean_list_ndcg`: NDCG@k within per-query lists (fast numpy; used for early stopping);
* :func:`retrieval_metrics`: NDCG@k, MRR and Recall@k over flat (query index, score, gain) arrays --
  the evaluation of whole-catalog rankings. Same definitions as torchmetrics' retrieval metrics
  (a test checks them against torchmetrics), in numpy: importing torchmetrics pulls in torchvision,
  torch._dynamo and transformers (tens of seconds on a busy 2-core machine) for a few lines of maths,
  and torchmetrics 1.9 counts a non-positive score as "not retrieved" (MRR, recall), which would
  mis-score rankers whose raw scores are negative; here unretrieved items are marked explicitly.
"""

from __future__ import annotations

import numpy as np


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
    if len(scores) == 0 or gains.max(initial=0) <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")[:k]
    disc = 1.0 / np.log2(np.arange(2, len(order) + 2))
    dcg = float((gains[order] * disc).sum())
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal * disc[:len(ideal)]).sum())
    return dcg / idcg if idcg > 0 else 0.0


def mean_list_ndcg(scores: np.ndarray, labels: np.ndarray, groups: list[np.ndarray], k: int) -> float:
    vals = [ndcg_at_k(scores[g], labels[g], k) for g in groups if labels[g].max(initial=0) > 0]
    return float(np.mean(vals)) if vals else 0.0


FLOOR = -1e9  # a score at or below this marks an item the system did not retrieve


def query_metrics(scores: np.ndarray, gains: np.ndarray, relevant_min: float, k: int = 10,
                  recall_k: int = 100) -> dict[str, float] | None:
    """NDCG@k (graded gains), reciprocal rank and Recall@recall_k (binary: gain >= relevant_min)
    for one query. Items scored at or below :data:`FLOOR` were not retrieved: they never occupy a
    rank but count in the ideal DCG and the recall denominator. None when nothing is relevant."""
    rel = gains >= relevant_min
    if not rel.any():
        return None
    retrieved = scores > FLOOR
    order = np.flatnonzero(retrieved)[np.argsort(-scores[retrieved], kind="stable")]
    g, r = gains[order], rel[order]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((g[:k] * disc[:len(g[:k])]).sum())
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal * disc[:len(ideal)]).sum())
    hits = np.flatnonzero(r)
    return {f"ndcg_at_{k}": dcg / idcg if idcg > 0 else 0.0,
            "mrr": 1.0 / (hits[0] + 1) if len(hits) else 0.0,
            f"recall_at_{recall_k}": float(r[:recall_k].sum() / rel.sum())}


def retrieval_metrics(indexes: np.ndarray, scores: np.ndarray, gains: np.ndarray, relevant_min: float,
                      k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """Mean over queries (grouped by ``indexes``) of :func:`query_metrics`, the same definitions as
    torchmetrics' ``RetrievalNormalizedDCG`` / ``RetrievalMRR`` / ``RetrievalRecall`` with
    ``empty_target_action="skip"`` (cross-checked in the tests), plus explicit not-retrieved items.
    Each query's list must hold every judged item so recall and the ideal DCG see all of them."""
    keys = [f"ndcg_at_{k}", "mrr", f"recall_at_{recall_k}"]
    indexes, scores, gains = np.asarray(indexes), np.asarray(scores, np.float64), np.asarray(gains, np.float64)
    order = np.argsort(indexes, kind="stable")
    idx_sorted = indexes[order]
    bounds = np.flatnonzero(np.diff(idx_sorted)) + 1
    per = []
    for sel in np.split(order, bounds) if len(order) else []:
        m = query_metrics(scores[sel], gains[sel], relevant_min, k, recall_k)
        if m is not None:
            per.append(m)
    if not per:
        return {**{key: float("nan") for key in keys}, "queries": 0}
    return {**{key: float(np.mean([m[key] for m in per])) for key in keys}, "queries": len(per)}
