"""``weighted``: score = alpha * s_text + beta * s_image + gamma * s_numeric with learned weights.

The weights are a softmax over the modalities that are present, so they are renormalised when the
product has no image; a learned bias stands in for the missing image evidence.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmpipeline.rank.fusion.base import MODALITIES, FusionConfig, FusionRanker


class WeightedFusion(FusionRanker):
    kind = "weighted"

    def build_head(self, cfg: FusionConfig) -> None:
        h = cfg.hidden_dim
        self.heads = nn.ModuleDict({m: nn.Linear(h, 1) for m in MODALITIES})
        self.modality_logits = nn.Parameter(torch.zeros(3))  # alpha, beta, gamma before the softmax
        self.image_missing_bias = nn.Parameter(torch.zeros(1))

    def fuse(self, h_t, h_i, h_n, has_image, q_text) -> torch.Tensor:
        s = torch.cat([self.heads["text"](h_t), self.heads["image"](h_i), self.heads["numeric"](h_n)], dim=-1)
        present = torch.cat([torch.ones_like(has_image), has_image, torch.ones_like(has_image)], dim=-1)
        logits = self.modality_logits.unsqueeze(0).expand_as(s).masked_fill(present < 0.5, -1e4)
        w = torch.softmax(logits, dim=-1)
        return (w * s).sum(-1) + self.image_missing_bias * (1 - has_image.squeeze(-1))

    def modality_weights(self) -> dict[str, float]:
        """alpha, beta, gamma (all modalities present)."""
        w = torch.softmax(self.modality_logits.detach().cpu(), dim=0).tolist()
        return dict(zip(("alpha_text", "beta_image", "gamma_numeric"), w))
