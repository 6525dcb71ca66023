"""The fusion factory, each fusion kind's forward shape and image masking, and checkpoint compatibility."""

from __future__ import annotations

import pytest
import torch

from mmpipeline.retrieval.features import SCALAR_FEATURES
from mmpipeline.rank.fusion import (FUSIONS, AttentionFusion, ConcatFusion, FusionConfig, FusionRanker, WeightedFusion,
                                    build_ranker, load_ranker_file)

DIM, H = 8, 6


def _inputs(n=4, has_image=(1.0, 0.0, 1.0, 0.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    q, pt, pi = (torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=-1) for _ in range(3))
    sc = torch.rand(n, len(SCALAR_FEATURES), generator=g)
    sc[:, SCALAR_FEATURES.index("has_image")] = torch.tensor(has_image)
    return q, pt, pi, sc


def test_factory_picks_one_class_per_kind_and_rejects_unknown():
    assert {k: c for k, c in FUSIONS.items()} == {"concat": ConcatFusion, "weighted": WeightedFusion,
                                                   "attention": AttentionFusion}
    for kind, cls in FUSIONS.items():
        m = build_ranker(FusionConfig(dim=DIM, fusion=kind, hidden_dim=H))
        assert type(m) is cls and isinstance(m, FusionRanker) and m.kind == kind
    with pytest.raises(ValueError, match="unknown fusion 'gated'"):
        build_ranker(FusionConfig(dim=DIM, fusion="gated"))
    with pytest.raises(ValueError, match="implements fusion 'concat'"):
        ConcatFusion(FusionConfig(dim=DIM, fusion="weighted"))
    with pytest.raises(TypeError):
        FusionRanker(FusionConfig(dim=DIM))


# the parameter names of the former single-class FusionRanker: saved state dicts and registered
# model versions must keep loading, so every kind must keep exactly these
SHARED = {"mean", "std"} | {f"branches.{m}.mlp.{i}.{p}" for m in ("text", "image", "numeric")
                            for i in (0, 1, 4) for p in ("weight", "bias")} \
         | {f"branches.{m}.vec_proj.{p}" for m in ("text", "image") for p in ("weight", "bias")}
HEADS = {
    "concat": {f"head.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")},
    "weighted": {f"heads.{m}.{p}" for m in ("text", "image", "numeric") for p in ("weight", "bias")}
                | {"modality_logits", "image_missing_bias"},
    "attention": {"modality_emb", "cls", "q_proj.weight", "q_proj.bias"}
                 | {f"attn.{l}.{p}" for l in ("q", "k", "v", "out") for p in ("weight", "bias")}
                 | {f"head.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")},
}


@pytest.mark.parametrize("kind", list(FUSIONS))
def test_state_dict_names_are_those_of_the_former_single_class(kind):
    m = build_ranker(FusionConfig(dim=DIM, fusion=kind, hidden_dim=H))
    assert set(m.state_dict()) == SHARED | HEADS[kind]


@pytest.mark.parametrize("kind", list(FUSIONS))
def test_each_kind_scores_n_pairs_and_ignores_an_absent_image(kind, tmp_path):
    torch.manual_seed(0)
    m = build_ranker(FusionConfig(dim=DIM, fusion=kind, hidden_dim=H, dropout=0.0)).eval()
    q, pt, pi, sc = _inputs()
    m.fit_scaler(sc.numpy())
    with torch.no_grad():
        s = m(q, pt, pi, sc)
        assert s.shape == (4,) and s.dtype == torch.float32
        # rows 1 and 3 have no image: their scores must not move when their image vector changes;
        # rows 0 and 2 have one, and theirs must (else the image is not used at all)
        pi2 = pi.clone()
        pi2[:] = torch.nn.functional.normalize(torch.randn(4, DIM, generator=torch.Generator().manual_seed(9)), dim=-1)
        s2 = m(q, pt, pi2, sc)
    torch.testing.assert_close(s[[1, 3]], s2[[1, 3]])
    assert not torch.allclose(s[[0, 2]], s2[[0, 2]])
    m.save(str(tmp_path / "m.pt"))
    m2 = load_ranker_file(str(tmp_path / "m.pt"))
    assert type(m2) is type(m)
    with torch.no_grad():
        torch.testing.assert_close(m2(q, pt, pi, sc), s)


def test_attention_gives_an_absent_image_no_weight():
    torch.manual_seed(0)
    m = build_ranker(FusionConfig(dim=DIM, fusion="attention", hidden_dim=H, dropout=0.0)).eval()
    q, pt, pi, sc = _inputs()
    with torch.no_grad():
        h_t, h_i, h_n, has = m.towers(q, pt, pi, sc)
        _, w = m.attend(h_t, h_i, h_n, has, q)
    assert w.shape == (4, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(4))
    assert (w[[1, 3], 1] < 1e-6).all() and (w[[0, 2], 1] > 1e-3).all()


def test_weighted_renormalises_over_present_modalities():
    m = build_ranker(FusionConfig(dim=DIM, fusion="weighted", hidden_dim=H, dropout=0.0)).eval()
    with torch.no_grad():
        m.modality_logits.copy_(torch.tensor([0.0, 0.0, 0.0]))
        m.image_missing_bias.zero_()
        for name in ("text", "image", "numeric"):
            m.heads[name].weight.zero_()
        m.heads["text"].bias.fill_(3.0)
        m.heads["image"].bias.fill_(6.0)
        m.heads["numeric"].bias.fill_(0.0)
        s = m(*_inputs())
    # equal weights: with an image (3 + 6 + 0) / 3; without one the image is out: (3 + 0) / 2
    torch.testing.assert_close(s, torch.tensor([3.0, 1.5, 3.0, 1.5]))
    assert m.modality_weights() == pytest.approx({"alpha_text": 1 / 3, "beta_image": 1 / 3, "gamma_numeric": 1 / 3})
    assert build_ranker(FusionConfig(dim=DIM, fusion="concat")).modality_weights() is None
