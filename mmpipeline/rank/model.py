"""The multimodal fusion ranker (PyTorch) and its MLflow pyfunc wrapper.

One branch per modality projects that modality's evidence into a shared hidden space:

* text:    (q * p_text) * dim  (the query/title interaction vector) + text scalars (cosine, BM25 ...)
* image:   (q * p_image) * dim + image scalars (cosine query-image, has_image)
* numeric: log price, log popularity, rating and their missing indicators

and a fusion selected by config combines them into one score:

* ``concat``    early fusion: the branch outputs are concatenated and scored by an MLP head;
* ``weighted``  score = alpha * s_text + beta * s_image + gamma * s_numeric, with learned weights
  (a softmax over the modalities that are present, so the weights are renormalised when the
  product has no image);
* ``attention`` a learned query token (shifted by the query vector) attends over the modality
  tokens; a missing image is masked out of the attention.

In every variant a product without an image gets a sound score: its image branch is masked, never
fed zeros as if they were evidence, and the score does not depend on the content of its (absent)
image vector. Scalar features are standardised inside the model with statistics fitted on the
training set, so the model takes raw features from :class:`~mmpipeline.rank.features.PairFeaturizer`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mmpipeline.rank.features import INDICATORS, MODALITY_SCALARS, SCALAR_FEATURES, frame_to_arrays

MODALITIES = ("text", "image", "numeric")


@dataclass
class FusionConfig:
    dim: int  # embedding dimension of the query/product vectors
    fusion: str = "attention"  # concat | weighted | attention
    hidden_dim: int = 64
    dropout: float = 0.1
    scalar_features: list[str] = field(default_factory=lambda: list(SCALAR_FEATURES))
    modality_scalars: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in MODALITY_SCALARS.items()})
    use_vectors: bool = True  # False: the branches see only the scalar features (an ablation)


def _mlp(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(n_out, n_out), nn.GELU())


class ModalityBranch(nn.Module):
    """Projects one modality's interaction vector and scalar features into the hidden space."""

    def __init__(self, vec_dim: int, n_scalars: int, hidden: int, dropout: float):
        super().__init__()
        self.vec_dim = vec_dim
        self.vec_proj = nn.Linear(vec_dim, hidden) if vec_dim else None
        self.mlp = _mlp(hidden * (1 if vec_dim else 0) + n_scalars, hidden, dropout)

    def forward(self, vec: torch.Tensor | None, scalars: torch.Tensor) -> torch.Tensor:
        parts = [scalars]
        if self.vec_proj is not None and vec is not None:
            parts.insert(0, self.vec_proj(vec))
        return self.mlp(torch.cat(parts, dim=-1))


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


class FusionRanker(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        if cfg.fusion not in ("concat", "weighted", "attention"):
            raise ValueError(f"unknown fusion {cfg.fusion!r}; expected concat, weighted or attention")
        self.cfg = cfg
        h = cfg.hidden_dim
        names = cfg.scalar_features
        self.idx = {m: [names.index(c) for c in cfg.modality_scalars[m]] for m in MODALITIES}
        self.has_image_idx = names.index("has_image")
        self.register_buffer("mean", torch.zeros(len(names)))
        self.register_buffer("std", torch.ones(len(names)))
        vd = cfg.dim if cfg.use_vectors else 0
        self.branches = nn.ModuleDict({
            "text": ModalityBranch(vd, len(self.idx["text"]), h, cfg.dropout),
            "image": ModalityBranch(vd, len(self.idx["image"]), h, cfg.dropout),
            "numeric": ModalityBranch(0, len(self.idx["numeric"]), h, cfg.dropout),
        })
        if cfg.fusion == "concat":
            self.head = nn.Sequential(nn.Linear(3 * h + 1, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))
        elif cfg.fusion == "weighted":
            self.heads = nn.ModuleDict({m: nn.Linear(h, 1) for m in MODALITIES})
            self.modality_logits = nn.Parameter(torch.zeros(3))  # alpha, beta, gamma before the softmax
            self.image_missing_bias = nn.Parameter(torch.zeros(1))
        else:
            self.modality_emb = nn.Parameter(torch.randn(3, h) * 0.02)
            self.cls = nn.Parameter(torch.randn(h) * 0.02)
            self.q_proj = nn.Linear(cfg.dim, h) if cfg.use_vectors else None
            self.attn = ModalityAttention(h)
            self.head = nn.Sequential(nn.Linear(2 * h + 1, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))

    # ------------------------------------------------------------------------- statistics
    def fit_scaler(self, scalars: np.ndarray) -> None:
        x = torch.as_tensor(scalars, dtype=torch.float32)
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        for i, name in enumerate(self.cfg.scalar_features):
            if name in INDICATORS:
                mean[i], std[i] = 0.0, 1.0
        self.mean.copy_(mean.to(self.mean.device))
        self.std.copy_(std.to(self.std.device))

    # ------------------------------------------------------------------------- forward
    def forward(self, q_text: torch.Tensor, p_text: torch.Tensor, p_image: torch.Tensor,
                scalars: torch.Tensor) -> torch.Tensor:
        """Scores [n] for n pairs. Vectors are L2-normalised [n, dim]; scalars raw [n, S]."""
        has_image = scalars[:, self.has_image_idx:self.has_image_idx + 1].clamp(0, 1)
        z = (scalars - self.mean) / self.std
        scale = float(self.cfg.dim)
        vt = vi = None
        if self.cfg.use_vectors:
            vt = q_text * p_text * scale
            vi = q_text * p_image * scale * has_image  # an absent image contributes nothing
        h_t = self.branches["text"](vt, z[:, self.idx["text"]])
        h_i = self.branches["image"](vi, z[:, self.idx["image"]]) * has_image
        h_n = self.branches["numeric"](None, z[:, self.idx["numeric"]])
        f = self.cfg.fusion
        if f == "concat":
            return self.head(torch.cat([h_t, h_i, h_n, has_image], dim=-1)).squeeze(-1)
        if f == "weighted":
            s = torch.cat([self.heads["text"](h_t), self.heads["image"](h_i), self.heads["numeric"](h_n)], dim=-1)
            present = torch.cat([torch.ones_like(has_image), has_image, torch.ones_like(has_image)], dim=-1)
            logits = self.modality_logits.unsqueeze(0).expand_as(s).masked_fill(present < 0.5, -1e4)
            w = torch.softmax(logits, dim=-1)
            return (w * s).sum(-1) + self.image_missing_bias * (1 - has_image.squeeze(-1))
        tokens = torch.stack([h_t, h_i, h_n], dim=1) + self.modality_emb.unsqueeze(0)
        query = self.cls.unsqueeze(0).expand(len(tokens), -1)
        if self.q_proj is not None:
            query = query + self.q_proj(q_text)
        missing = torch.zeros(len(tokens), 3, dtype=torch.bool, device=tokens.device)
        missing[:, 1] = has_image.squeeze(-1) < 0.5
        out, _ = self.attn(query, tokens, missing)
        return self.head(torch.cat([out, h_t, has_image], dim=-1)).squeeze(-1)

    def modality_weights(self) -> dict[str, float] | None:
        """alpha, beta, gamma of the weighted fusion (all modalities present)."""
        if self.cfg.fusion != "weighted":
            return None
        w = torch.softmax(self.modality_logits.detach().cpu(), dim=0).tolist()
        return dict(zip(("alpha_text", "beta_image", "gamma_numeric"), w))

    @torch.no_grad()
    def score_arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 8192,
                     device: str | torch.device = "cpu") -> np.ndarray:
        self.eval()
        n = len(arrays["scalars"])
        out = np.empty(n, dtype=np.float64)
        for s in range(0, n, batch_size):
            b = {k: torch.as_tensor(v[s:s + batch_size], dtype=torch.float32, device=device) for k, v in arrays.items()}
            out[s:s + batch_size] = self(b["q_text"], b["p_text"], b["p_image"], b["scalars"]).float().cpu().numpy()
        return out

    # ------------------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        torch.save({"config": asdict(self.cfg), "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str, map_location: str | torch.device = "cpu") -> "FusionRanker":
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(FusionConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        return model


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


try:  # the pyfunc wrapper needs mlflow; the model itself does not
    import mlflow.pyfunc

    class RankerPyfunc(mlflow.pyfunc.PythonModel):
        """``predict(features_df) -> scores`` (one float per row) for the registered model."""

        def __init__(self, batch_size: int = 8192):
            self.batch_size = batch_size
            self.model: FusionRanker | None = None

        def load_context(self, context) -> None:
            self.device = resolve_device("auto")
            self.model = FusionRanker.load(context.artifacts["model"], map_location=self.device).to(self.device)

        def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
            import pandas as pd

            df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            if len(df) == 0:
                return np.zeros(0, dtype=np.float64)
            return self.model.score_arrays(frame_to_arrays(df), self.batch_size, self.device)

        def describe(self) -> str:
            return json.dumps(asdict(self.model.cfg)) if self.model else "{}"
except ImportError:  # pragma: no cover
    RankerPyfunc = None  # type: ignore[assignment,misc]
