"""Ranking metrics.

* :func:`mean_list_ndcg`: NDCG@k within per-query lists (fast numpy; used for early stopping);
* :func:`retrieval_metrics`: NDCG@k, MRR and Recall@k with torchmetrics' retrieval metrics over
  flat (query index, score, gain) arrays -- the evaluation of whole-catalog rankings.
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


def retrieval_metrics(indexes: np.ndarray, scores: np.ndarray, gains: np.ndarray, relevant_min: float,
                      k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """Mean over queries of NDCG@k (graded gains), MRR and Recall@recall_k (binary: gain >=
    ``relevant_min``). Each query's list must contain every judged-relevant item (unretrieved ones
    with a score below every retrieved one) so recall and the ideal DCG see all of them.
    Queries without a relevant item are skipped (``empty_target_action='skip'``)."""
    import torch
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

    if len(indexes) == 0:
        return {f"ndcg_at_{k}": float("nan"), "mrr": float("nan"), f"recall_at_{recall_k}": float("nan"), "queries": 0}
    idx = torch.as_tensor(np.asarray(indexes), dtype=torch.long)
    preds = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    g = torch.as_tensor(np.asarray(gains, dtype=np.float64))
    rel = g >= relevant_min
    ndcg = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")(preds, g.float(), indexes=idx)
    mrr = RetrievalMRR(empty_target_action="skip")(preds, rel, indexes=idx)
    rec = RetrievalRecall(top_k=recall_k, empty_target_action="skip")(preds, rel, indexes=idx)
    n_q = int(len(torch.unique(idx[rel]))) if rel.any() else 0
    return {f"ndcg_at_{k}": float(ndcg), "mrr": float(mrr), f"recall_at_{recall_k}": float(rec), "queries": n_q}
