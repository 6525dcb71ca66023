"""Fusion rankers: one module per fusion kind behind one interface (:class:`FusionRanker`).

* :mod:`~mmpipeline.rank.fusion.base`      the interface, the modality towers, masking, scaler, persistence;
* :mod:`~mmpipeline.rank.fusion.concat`    early fusion (concatenation + MLP head);
* :mod:`~mmpipeline.rank.fusion.weighted`  learned per-modality weights, renormalised without an image;
* :mod:`~mmpipeline.rank.fusion.attention` attention of a query token over the modality tokens.

``build_ranker(cfg)`` picks the kind named by ``cfg.fusion`` (``rank.fusion`` in the config);
``load_ranker_file(path)`` loads a saved model of any kind.
"""

from __future__ import annotations

import torch

from mmpipeline.rank.fusion.attention import AttentionFusion
from mmpipeline.rank.fusion.base import MODALITIES, FusionConfig, FusionRanker, ModalityBranch
from mmpipeline.rank.fusion.concat import ConcatFusion
from mmpipeline.rank.fusion.weighted import WeightedFusion

FUSIONS: dict[str, type[FusionRanker]] = {c.kind: c for c in (ConcatFusion, WeightedFusion, AttentionFusion)}

__all__ = ["FUSIONS", "MODALITIES", "AttentionFusion", "ConcatFusion", "FusionConfig", "FusionRanker",
           "ModalityBranch", "WeightedFusion", "build_ranker", "load_ranker_file"]


def build_ranker(cfg: FusionConfig) -> FusionRanker:
    """A new (untrained) ranker of the kind ``cfg.fusion``."""
    try:
        cls = FUSIONS[cfg.fusion]
    except KeyError:
        raise ValueError(f"unknown fusion {cfg.fusion!r}; expected {', '.join(FUSIONS)}") from None
    return cls(cfg)


def load_ranker_file(path: str, map_location: str | torch.device = "cpu") -> FusionRanker:
    """A ranker saved with :meth:`FusionRanker.save` (any kind), in eval mode."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = build_ranker(FusionConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model
