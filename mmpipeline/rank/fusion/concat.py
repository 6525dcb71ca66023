"""``concat``: early fusion -- the modality outputs and has_image, concatenated, scored by an MLP head."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmpipeline.rank.fusion.base import FusionConfig, FusionRanker


class ConcatFusion(FusionRanker):
    kind = "concat"

    def build_head(self, cfg: FusionConfig) -> None:
        h = cfg.hidden_dim
        n_in = 3 * h + 1 if self.has_image_branch else 2 * h  # no image columns without the modality
        self.head = nn.Sequential(nn.Linear(n_in, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))

    def fuse(self, h_t, h_i, h_n, has_image, q_text) -> torch.Tensor:
        parts = [h_t, h_i, h_n, has_image] if self.has_image_branch else [h_t, h_n]
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)
