"""``concat``: early fusion -- the modality outputs and has_image, concatenated, scored by an MLP head."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmpipeline.rank.fusion.base import FusionConfig, FusionRanker


class ConcatFusion(FusionRanker):
    kind = "concat"

    def build_head(self, cfg: FusionConfig) -> None:
        h = cfg.hidden_dim
        self.head = nn.Sequential(nn.Linear(3 * h + 1, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))

    def fuse(self, h_t, h_i, h_n, has_image, q_text) -> torch.Tensor:
        return self.head(torch.cat([h_t, h_i, h_n, has_image], dim=-1)).squeeze(-1)
