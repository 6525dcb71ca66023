"""``attention``: a learned query token (shifted by the query vector) attends over the modality
tokens; a missing image is masked out of the attention."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmpipeline.rank.fusion.base import FusionConfig, FusionRanker


class ModalityAttention(nn.Module):
    """Single-head scaled dot-product attention of one query token over the modality tokens;
    masked (absent) modalities get no weight."""

    def __init__(self, hidden: int):
        super().__init__()
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.scale = hidden ** -0.5

    def forward(self, query: torch.Tensor, tokens: torch.Tensor, missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.einsum("nh,nmh->nm", self.q(query), self.k(tokens)) * self.scale
        w = torch.softmax(logits.masked_fill(missing, -1e4), dim=-1)
        return self.out(torch.einsum("nm,nmh->nh", w, self.v(tokens))), w


class AttentionFusion(FusionRanker):
    kind = "attention"

    def build_head(self, cfg: FusionConfig) -> None:
        h = cfg.hidden_dim
        self.modality_emb = nn.Parameter(torch.randn(3, h) * 0.02)
        self.cls = nn.Parameter(torch.randn(h) * 0.02)
        self.q_proj = nn.Linear(cfg.dim, h) if cfg.use_vectors else None
        self.attn = ModalityAttention(h)
        n_in = 2 * h + 1 if "image" in cfg.modalities else 2 * h  # has_image only where images exist
        self.head = nn.Sequential(nn.Linear(n_in, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))

    def attend(self, h_t, h_i, h_n, has_image, q_text) -> tuple[torch.Tensor, torch.Tensor]:
        """(attended output [n, h], attention weights [n, 3] over text, image, numeric; [n, 2] over
        text, numeric when the catalog has no images)."""
        if self.has_image_branch:
            tokens = torch.stack([h_t, h_i, h_n], dim=1) + self.modality_emb.unsqueeze(0)
        else:  # no image token at all
            tokens = torch.stack([h_t, h_n], dim=1) + self.modality_emb[[0, 2]].unsqueeze(0)
        query = self.cls.unsqueeze(0).expand(len(tokens), -1)
        if self.q_proj is not None:
            query = query + self.q_proj(q_text)
        missing = torch.zeros(len(tokens), tokens.shape[1], dtype=torch.bool, device=tokens.device)
        if self.has_image_branch:
            missing[:, 1] = has_image.squeeze(-1) < 0.5
        return self.attn(query, tokens, missing)

    def fuse(self, h_t, h_i, h_n, has_image, q_text) -> torch.Tensor:
        out, _ = self.attend(h_t, h_i, h_n, has_image, q_text)
        parts = [out, h_t, has_image] if self.has_image_branch else [out, h_t]
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)
