"""Ranking losses on padded per-query lists.

Every loss takes ``scores`` and ``labels`` of shape ``[queries, list_len]`` and a boolean ``mask`` of
the same shape (True = a real item, False = padding); labels are graded relevance in [0, 1].

* pointwise: binary cross-entropy on the (soft) labels, or mean squared error on them;
* pairwise: RankNet (logistic loss on score differences of pairs with different labels);
* listwise: ListNet (cross-entropy between the softmax of labels and of scores, top-one
  approximation) and LambdaLoss (RankNet pairs weighted by their |delta NDCG|, the NDCG-Loss2 bound
  of Wang et al. 2018 in its simplest form).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NEG = -1e9


def pointwise_bce(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(scores[mask], labels[mask].clamp(0, 1))


def pointwise_mse(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(scores[mask], labels[mask])


def _pairs(scores, labels, mask):
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # s_i - s_j
    better = (labels.unsqueeze(2) > labels.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
    return diff, better


def ranknet(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    diff, better = _pairs(scores, labels, mask)
    if not better.any():
        return scores.sum() * 0.0
    return F.softplus(-diff[better]).mean()


def listnet(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    s = scores.masked_fill(~mask, NEG)
    y = (labels / temperature).masked_fill(~mask, NEG)
    keep = (labels.masked_fill(~mask, 0).amax(dim=1) > 0) & (mask.sum(dim=1) > 1)  # lists with a relevant item
    if not keep.any():
        return scores.sum() * 0.0
    p_true = torch.softmax(y[keep], dim=1)
    log_p = torch.log_softmax(s[keep], dim=1)
    return -(p_true * log_p).masked_fill(~mask[keep], 0).sum(dim=1).mean()


def lambdaloss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RankNet pairs weighted by |delta NDCG| of swapping them under the current ranking."""
    s = scores.masked_fill(~mask, NEG)
    gains = (2.0 ** labels - 1.0).masked_fill(~mask, 0)
    ranks = torch.argsort(torch.argsort(s.detach(), dim=1, descending=True), dim=1).float()
    disc = 1.0 / torch.log2(ranks + 2.0)
    ideal = torch.sort(gains, dim=1, descending=True).values
    idcg = (ideal / torch.log2(torch.arange(gains.shape[1], device=gains.device).float() + 2.0)).sum(dim=1, keepdim=True)
    delta = (gains.unsqueeze(2) - gains.unsqueeze(1)).abs() * (disc.unsqueeze(2) - disc.unsqueeze(1)).abs()
    delta = delta / idcg.clamp(min=1e-9).unsqueeze(2)
    diff, better = _pairs(scores, labels, mask)
    if not better.any():
        return scores.sum() * 0.0
    w = delta[better].detach()
    return (w * F.softplus(-diff[better])).sum() / w.sum().clamp(min=1e-9)


def get_loss(kind: str, pointwise: str = "bce", temperature: float = 0.1):
    """The loss ``kind``; ``temperature``: ListNet's label temperature (lower: the target distribution
    puts nearly all its mass on the best-graded items; higher: the lower grades count too)."""
    if kind == "pointwise":
        return pointwise_bce if pointwise == "bce" else pointwise_mse
    if kind == "pairwise":
        return ranknet
    if kind == "listwise":
        return functools.partial(listnet, temperature=temperature)
    if kind == "lambda":
        return lambdaloss
    raise ValueError(f"unknown loss {kind!r}; expected pointwise, pairwise, listwise or lambda")
