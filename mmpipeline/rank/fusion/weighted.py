"""``weighted``: score = alpha * s_text + beta * s_image + gamma * s_numeric with learned weights.

The weights are a softmax over the modalities that are present, so they are renormalised when the
product has no image; a learned bias stands in for the missing image evidence. A catalog without
images has no image modality at all: two weights (text, numeric), no image weight, no bias.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmpipeline.rank.fusion.base import MODALITIES, FusionConfig, FusionRanker


class WeightedFusion(FusionRanker):
    kind = "weighted"

    def build_head(self, cfg: FusionConfig) -> None:
        h = cfg.hidden_dim
        self.mods = [m for m in MODALITIES if m != "image" or self.has_image_branch]
        self.heads = nn.ModuleDict({m: nn.Linear(h, 1) for m in self.mods})
        self.modality_logits = nn.Parameter(torch.zeros(len(self.mods)))  # alpha, (beta,) gamma before the softmax
        if self.has_image_branch:
            self.image_missing_bias = nn.Parameter(torch.zeros(1))

    def fuse(self, h_t, h_i, h_n, has_image, q_text) -> torch.Tensor:
        if not self.has_image_branch:
            s = torch.cat([self.heads["text"](h_t), self.heads["numeric"](h_n)], dim=-1)
            w = torch.softmax(self.modality_logits, dim=0)
            return (w.unsqueeze(0) * s).sum(-1)
        s = torch.cat([self.heads["text"](h_t), self.heads["image"](h_i), self.heads["numeric"](h_n)], dim=-1)
        present = torch.cat([torch.ones_like(has_image), has_image, torch.ones_like(has_image)], dim=-1)
        logits = self.modality_logits.unsqueeze(0).expand_as(s).masked_fill(present < 0.5, -1e4)
        w = torch.softmax(logits, dim=-1)
        return (w * s).sum(-1) + self.image_missing_bias * (1 - has_image.squeeze(-1))

    def modality_weights(self) -> dict[str, float]:
        """alpha, beta, gamma (all modalities present); no beta when the catalog has no images."""
        w = torch.softmax(self.modality_logits.detach().cpu(), dim=0).tolist()
        names = {"text": "alpha_text", "image": "beta_image", "numeric": "gamma_numeric"}
        return {names[m]: v for m, v in zip(self.mods, w)}
