"""Fusion model variants and ranking losses on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpipeline.rank import losses
from mmpipeline.retrieval.features import SCALAR_FEATURES
from mmpipeline.rank.fusion import FusionConfig, build_ranker, load_ranker_file

DIM = 8


def _inputs(n: int = 6, seed: int = 0, has_image=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    pt = torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    pi = torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=-1)
    sc = torch.rand(n, len(SCALAR_FEATURES), generator=g)
    hi = SCALAR_FEATURES.index("has_image")
    sc[:, hi] = torch.tensor(has_image if has_image is not None else [1.0, 0.0] * (n // 2))
    return q, pt, pi, sc


@pytest.mark.parametrize("fusion", ["concat", "weighted", "attention"])
def test_fusion_variants_score_and_backprop(fusion):
    torch.manual_seed(0)
    m = build_ranker(FusionConfig(dim=DIM, fusion=fusion, hidden_dim=8, dropout=0.0))
    q, pt, pi, sc = _inputs()
    m.fit_scaler(sc.numpy())
    s = m(q, pt, pi, sc)
    assert s.shape == (6,) and torch.isfinite(s).all()
    s.sum().backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _lists(n_queries: int, items: int, seed: int):
    """Lists where the relevant items' text vectors point at the query and the scalars are noise:
    only a model that learns from the query/product interaction can rank them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n_queries, DIM, generator=g), dim=-1)
    labels = (torch.rand(n_queries, items, generator=g) < 0.3).float()
    labels[:, 0] = 1.0
    noise = torch.randn(n_queries, items, DIM, generator=g)
    pt = torch.nn.functional.normalize(torch.where(labels[..., None] > 0, q[:, None, :] + 0.3 * noise, noise), dim=-1)
    pi = torch.nn.functional.normalize(torch.randn(n_queries, items, DIM, generator=g), dim=-1)
    sc = torch.rand(n_queries, items, len(SCALAR_FEATURES), generator=g)
    sc[..., SCALAR_FEATURES.index("has_image")] = 1.0
    return q[:, None, :].expand(-1, items, -1), pt, pi, sc, labels


def _held_out_ndcg(m, data) -> float:
    from mmpipeline.rank.metrics import mean_list_ndcg

    q, pt, pi, sc, labels = data
    n, k = labels.shape
    m.eval()
    with torch.no_grad():
        s = m(q.reshape(n * k, DIM), pt.reshape(n * k, DIM), pi.reshape(n * k, DIM), sc.reshape(n * k, -1))
    groups = [np.arange(i * k, (i + 1) * k) for i in range(n)]
    return mean_list_ndcg(s.numpy().astype(np.float64), labels.reshape(-1).numpy(), groups, 3)


@pytest.mark.parametrize("fusion", ["concat", "weighted", "attention"])
def test_fusion_variants_learn_to_rank_held_out_lists(fusion):
    """Training must improve NDCG@3 on held-out lists, well above the untrained model's."""
    torch.manual_seed(0)
    train, held_out = _lists(96, 8, seed=1), _lists(48, 8, seed=2)
    m = build_ranker(FusionConfig(dim=DIM, fusion=fusion, hidden_dim=16, dropout=0.0, use_vectors=True))
    q, pt, pi, sc, labels = train
    n, k = labels.shape
    m.fit_scaler(sc.reshape(n * k, -1).numpy())
    before = _held_out_ndcg(m, held_out)
    fn = losses.get_loss("listwise")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    mask = torch.ones(n, k, dtype=torch.bool)
    for _ in range(40):
        m.train()
        s = m(q.reshape(n * k, DIM), pt.reshape(n * k, DIM), pi.reshape(n * k, DIM), sc.reshape(n * k, -1))
        loss = fn(s.reshape(n, k), labels, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _held_out_ndcg(m, held_out)
    assert after > 0.85 and after > before + 0.3, (before, after)


@pytest.mark.parametrize("fusion", ["concat", "weighted", "attention"])
def test_product_without_image_scores_soundly(fusion):
    """No image: a finite score that does not depend on whatever sits in the (absent) image vector."""
    torch.manual_seed(0)
    m = build_ranker(FusionConfig(dim=DIM, fusion=fusion, hidden_dim=8)).eval()
    q, pt, pi, sc = _inputs(has_image=[0.0] * 6)
    with torch.no_grad():
        a = m(q, pt, pi, sc)
        b = m(q, pt, torch.randn_like(pi) * 100, sc)
        c = m(q, pt, torch.zeros_like(pi), sc)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_weighted_fusion_exposes_modality_weights():
    m = build_ranker(FusionConfig(dim=DIM, fusion="weighted", hidden_dim=8))
    w = m.modality_weights()
    assert set(w) == {"alpha_text", "beta_image", "gamma_numeric"}
    assert abs(sum(w.values()) - 1) < 1e-6


def test_save_load_roundtrip(tmp_path):
    m = build_ranker(FusionConfig(dim=DIM, fusion="attention", hidden_dim=8)).eval()
    q, pt, pi, sc = _inputs()
    m.fit_scaler(sc.numpy())
    m.save(str(tmp_path / "m.pt"))
    m2 = load_ranker_file(str(tmp_path / "m.pt"))
    with torch.no_grad():
        torch.testing.assert_close(m(q, pt, pi, sc), m2(q, pt, pi, sc))


LABELS = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True, False], [True, True, True, True]])


@pytest.mark.parametrize("kind", ["pointwise", "pairwise", "listwise", "lambda"])
def test_loss_prefers_the_right_order(kind):
    fn = losses.get_loss(kind)
    good = LABELS * 4 - 2  # scores ordered like the labels
    bad = -good
    assert fn(good, LABELS, MASK) < fn(bad, LABELS, MASK)


@pytest.mark.parametrize("kind", ["pointwise", "pairwise", "listwise", "lambda"])
def test_loss_ignores_padding_and_has_gradients(kind):
    fn = losses.get_loss(kind)
    s = torch.randn(2, 4, requires_grad=True)
    l1 = fn(s, LABELS, MASK)
    s2 = s.detach().clone()
    s2[0, 3] = 1e3  # padded position
    l2 = fn(s2, LABELS, MASK)
    assert torch.isclose(l1, l2)
    l1.backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 3] == 0


def test_mse_pointwise_and_empty_lists():
    fn = losses.get_loss("pointwise", "mse")
    assert fn(LABELS.clone(), LABELS, MASK) == 0
    zero = torch.zeros(1, 3)
    for kind in ("pairwise", "listwise", "lambda"):
        assert losses.get_loss(kind)(torch.randn(1, 3), zero, torch.ones(1, 3, dtype=torch.bool)) == 0
    with pytest.raises(ValueError):
        losses.get_loss("nope")


def test_metrics_perfect_reversed_and_unretrieved():
    from mmpipeline.rank.metrics import FLOOR, mean_list_ndcg, retrieval_metrics

    idx = np.array([0, 0, 0, 1, 1, 1])
    gains = np.array([1.0, 0.5, 0.0, 0.0, 0.0, 1.0])
    perfect = retrieval_metrics(idx, gains * 10, gains, 0.5, k=10, recall_k=2)
    assert perfect["ndcg_at_10"] == pytest.approx(1.0) and perfect["mrr"] == pytest.approx(1.0)
    rev = retrieval_metrics(idx, -gains, gains, 0.5, k=10, recall_k=1)
    assert rev["ndcg_at_10"] < 1 and rev["recall_at_1"] == 0
    # a relevant item the system did not retrieve never counts, even within the top-k depth
    miss = retrieval_metrics(np.zeros(3), np.array([0.9, 0.8, FLOOR]), np.array([0.0, 0.0, 1.0]), 0.5, 10, 100)
    assert miss["recall_at_100"] == 0 and miss["mrr"] == 0 and miss["ndcg_at_10"] == 0
    groups = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    assert mean_list_ndcg(gains, gains, groups, 10) == pytest.approx(1.0)


@pytest.mark.slow
def test_metrics_match_torchmetrics():
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

    from mmpipeline.rank.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    idx = np.repeat(np.arange(20), 15)
    scores = rng.uniform(0.01, 1.0, size=len(idx))  # torchmetrics treats scores <= 0 as not retrieved
    gains = rng.choice([0.0, 0.0, 0.0, 0.5, 1.0], size=len(idx))
    ours = retrieval_metrics(idx, scores, gains, 0.5, k=5, recall_k=7)
    t_idx, t_s, t_g = torch.as_tensor(idx), torch.as_tensor(scores), torch.as_tensor(gains)
    rel = t_g >= 0.5
    assert ours["ndcg_at_5"] == pytest.approx(float(RetrievalNormalizedDCG(top_k=5, empty_target_action="skip")(t_s, t_g, indexes=t_idx)), abs=1e-6)
    assert ours["mrr"] == pytest.approx(float(RetrievalMRR(empty_target_action="skip")(t_s, rel, indexes=t_idx)), abs=1e-6)
    assert ours["recall_at_7"] == pytest.approx(float(RetrievalRecall(top_k=7, empty_target_action="skip")(t_s, rel, indexes=t_idx)), abs=1e-6)


def test_gate_promotes_only_on_a_strict_win():
    from mmpipeline.config import RankConfig
    from mmpipeline.rank.gate import decide

    def m(v):
        return {s: {"ndcg_at_10": v} for s in ("all", "short_queries", "long_queries", "no_image_products")}

    tie, why = decide(m(0.6), m(0.6), RankConfig(promote_margin=0.0))
    assert not tie and "a tie" in why[0]
    assert decide(m(0.6001), m(0.6), RankConfig(promote_margin=0.0))[0]
    # exactly at the margin is not a win either
    assert not decide(m(0.75), m(0.5), RankConfig(promote_margin=0.25))[0]
    assert decide(m(0.7501), m(0.5), RankConfig(promote_margin=0.25))[0]
