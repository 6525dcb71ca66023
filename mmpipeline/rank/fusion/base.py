"""The interface every fusion kind implements, and what they share.

A :class:`FusionRanker` owns the per-modality towers (one :class:`ModalityBranch` per modality),
the in-model standardisation of the raw scalar features, the masking of an absent image, batch
scoring and persistence. A fusion kind (a subclass, one module each in this package) adds its head
in :meth:`FusionRanker.build_head` and combines the three modality outputs in :meth:`FusionRanker.fuse`.

The branches project each modality's evidence into a shared hidden space:

* text:    (q * p_text) * dim  (the query/title interaction vector) + text scalars (cosine, BM25 ...)
* image:   (q * p_image) * dim + image scalars (cosine query-image, has_image)
* numeric: log price, log popularity, rating and their missing indicators

Each branch sees its scalar features z-scored and, with ``ple_bins`` (``rank.ple_bins``, 8 by default),
also as piecewise-linear encodings over the training rows' quantile bins: step-like responses to a
feature, which a tree ensemble gets for free and an MLP on a z-score does not.

A product without an image gets a sound score in every kind: its image branch output is zeroed
(masked) here, never fed zeros as if they were evidence, and each kind masks it again in its fusion.
A catalog without any image (``FusionConfig.modalities`` without ``image``) gets no image branch at
all: no image columns, no image weight, nothing learned on a constant.

The model reads the full ``SCALAR_FEATURES`` array and selects its own columns by name
(``FusionConfig.scalar_features``), so a model trained on a subset (no image, no text fields) and a
model saved before features were added both take the same input.
Parameter names (``branches.*``, ``mean``, ``std`` here; the heads in each kind) are those of the
former single-class ``rank.model.FusionRanker``, so saved state dicts and registered models load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from mmpipeline.retrieval.features import INDICATORS, MODALITY_SCALARS, SCALAR_FEATURES

MODALITIES = ("text", "image", "numeric")
SCALAR_TRANSFORMS = ("standard", "log1p", "quantile")
QUANTILE_KNOTS = 65


@dataclass
class FusionConfig:
    dim: int  # embedding dimension of the query/product vectors
    fusion: str = "attention"  # concat | weighted | attention
    hidden_dim: int = 64
    dropout: float = 0.1
    scalar_features: list[str] = field(default_factory=lambda: list(SCALAR_FEATURES))
    modality_scalars: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in MODALITY_SCALARS.items()})
    use_vectors: bool = True  # False: the branches see only the scalar features (an ablation)
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # without "image": no image branch
    # a pointwise grade head next to the ranking head (rank.grade_weight > 0): the normalised grade
    # regressed from the same modality towers (:meth:`FusionRanker.grade`); models saved without it load
    grade_head: bool = False
    # raw scalar features -> model input (non-indicator columns): standard (z-score), log1p (signed
    # log1p, then z-score: heavy-tailed counts and BM25 scores) or quantile (the training rows'
    # empirical CDF, piecewise linear over QUANTILE_KNOTS knots, centred and scaled to unit variance)
    scalar_transform: str = "standard"
    # piecewise-linear encoding of the non-indicator scalar features (Gorishniy et al., "On Embeddings for
    # Numerical Features in Tabular Deep Learning", 2022): each column also enters its branch as ple_bins
    # values, bin t = the position of x inside the t-th quantile bin of the training rows, clamped to
    # [0, 1] (0 below the bin, 1 above it), so a branch can learn step-like responses as trees do. 0: off
    ple_bins: int = 0
    # training only: Gaussian noise of this many standard deviations added to the z-scored non-indicator
    # scalar features (Qin et al., "Are Neural Rankers still Outperformed by Gradient Boosted Decision
    # Trees?", ICLR 2021: input noise as data augmentation); scoring never adds it. 0: off
    input_noise: float = 0.0
    # a learned low-rank bilinear query-image similarity, (U q) . (V p) with U, V [rank, dim] initialised
    # equal (so it starts near the cosine), entering the image branch as one more input: which directions
    # of the query text and the photo vectors should agree (a colour word and the photo's colour): one
    # similarity, where the interaction vectors (use_vectors) feed hidden_dim projections of the element-wise
    # product and overfit. No image branch: nothing. 0: off
    bilinear_rank: int = 0

    @classmethod
    def for_features(cls, dim: int, active: list[str], **kw) -> "FusionConfig":
        """A config over the scalar features ``active`` (a subset of SCALAR_FEATURES); the image
        modality is present only when its ``has_image`` column is."""
        mods = [m for m in MODALITIES if m != "image" or "has_image" in active]
        ms = {m: [c for c in MODALITY_SCALARS[m] if c in active] for m in MODALITIES}
        return cls(dim=dim, scalar_features=list(active), modality_scalars=ms, modalities=mods, **kw)


def _column_quantiles(x: torch.Tensor, k: int) -> torch.Tensor:
    """[F, k]: per column of ``x`` [n, F], its quantiles at k evenly spaced levels from 0 to 1 (ascending)."""
    q = torch.linspace(0, 1, k, dtype=torch.float64)
    return torch.quantile(x.double().T, q, dim=1).T.float()


def mlp(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(n_out, n_out), nn.GELU())


class ModalityBranch(nn.Module):
    """Projects one modality's interaction vector and scalar features into the hidden space."""

    def __init__(self, vec_dim: int, n_scalars: int, hidden: int, dropout: float):
        super().__init__()
        self.vec_dim = vec_dim
        self.vec_proj = nn.Linear(vec_dim, hidden) if vec_dim else None
        self.mlp = mlp(hidden * (1 if vec_dim else 0) + n_scalars, hidden, dropout)

    def forward(self, vec: torch.Tensor | None, scalars: torch.Tensor) -> torch.Tensor:
        parts = [scalars]
        if self.vec_proj is not None and vec is not None:
            parts.insert(0, self.vec_proj(vec))
        return self.mlp(torch.cat(parts, dim=-1))


class FusionRanker(nn.Module):
    """Base class of the fusion kinds: towers, scaler, masking, scoring and persistence."""

    kind: str = ""  # the FusionConfig.fusion value a subclass implements

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        if type(self) is FusionRanker:
            raise TypeError("FusionRanker is the interface: build one with mmpipeline.rank.fusion.build_ranker(cfg)")
        if cfg.fusion != self.kind:
            raise ValueError(f"{type(self).__name__} implements fusion {self.kind!r}, the config says {cfg.fusion!r}")
        self.cfg = cfg
        h = cfg.hidden_dim
        names = cfg.scalar_features
        unknown = [c for c in names if c not in SCALAR_FEATURES]
        if unknown:
            raise ValueError(f"unknown scalar features {unknown}")
        self.has_image_branch = "image" in cfg.modalities
        # columns of the full SCALAR_FEATURES input this model reads, in its own order
        self.input_cols = [SCALAR_FEATURES.index(c) for c in names]
        self.idx = {m: [names.index(c) for c in cfg.modality_scalars.get(m, [])] for m in MODALITIES}
        self.has_image_idx = SCALAR_FEATURES.index("has_image")  # in the full input
        self.register_buffer("mean", torch.zeros(len(names)))
        self.register_buffer("std", torch.ones(len(names)))
        if cfg.scalar_transform not in SCALAR_TRANSFORMS:
            raise ValueError(f"unknown scalar_transform {cfg.scalar_transform!r}; expected {', '.join(SCALAR_TRANSFORMS)}")
        self.register_buffer("dense_cols", torch.tensor([c not in INDICATORS for c in names], dtype=torch.bool),
                             persistent=False)  # derived from the config: not in saved state dicts
        if cfg.scalar_transform == "quantile":  # per column, the knots of the training rows' quantiles
            self.register_buffer("knots", torch.zeros(len(names), QUANTILE_KNOTS))
        if cfg.ple_bins < 0:
            raise ValueError(f"ple_bins must be >= 0, got {cfg.ple_bins}")
        # per branch, the positions (in the model's columns) of its non-indicator columns: their PLE inputs
        self.ple_idx = {m: [i for i in self.idx[m] if names[i] not in INDICATORS] for m in MODALITIES}
        if cfg.ple_bins:
            self.register_buffer("ple_edges", torch.zeros(len(names), cfg.ple_bins + 1))

        self.bilinear = nn.ModuleDict()
        if cfg.bilinear_rank:
            for m in ("image",) if self.has_image_branch else ():
                init = torch.randn(cfg.bilinear_rank, cfg.dim) / cfg.bilinear_rank ** 0.5
                u, v = nn.Linear(cfg.dim, cfg.bilinear_rank, bias=False), nn.Linear(cfg.dim, cfg.bilinear_rank, bias=False)
                u.weight.data.copy_(init)
                v.weight.data.copy_(init)
                self.bilinear[m] = nn.ModuleList([u, v])

        def n_in(m: str) -> int:
            return len(self.idx[m]) + cfg.ple_bins * len(self.ple_idx[m]) + (1 if m in self.bilinear else 0)

        vd = cfg.dim if cfg.use_vectors else 0
        branches = {"text": ModalityBranch(vd, n_in("text"), h, cfg.dropout)}
        if self.has_image_branch:
            branches["image"] = ModalityBranch(vd, n_in("image"), h, cfg.dropout)
        branches["numeric"] = ModalityBranch(0, n_in("numeric"), h, cfg.dropout)
        self.branches = nn.ModuleDict(branches)
        self.build_head(cfg)  # after the branches: the same parameter init order as before the split
        if cfg.grade_head:  # after the head: a model without it keeps its parameter init order
            self.grade_net = nn.Sequential(nn.Linear(3 * h, h), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(h, 1))

    # ------------------------------------------------------------------------- the interface
    def build_head(self, cfg: FusionConfig) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fuse(self, h_t: torch.Tensor, h_i: torch.Tensor, h_n: torch.Tensor, has_image: torch.Tensor,
             q_text: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Scores [n] from the modality outputs [n, h] (``h_i`` already zero where there is no
        image), ``has_image`` [n, 1] in {0, 1} and the query vectors [n, dim]."""
        raise NotImplementedError

    def modality_weights(self) -> dict[str, float] | None:
        """alpha, beta, gamma of a kind with explicit modality weights; None otherwise."""
        return None

    # ------------------------------------------------------------------------- statistics
    def fit_scaler(self, scalars: np.ndarray) -> None:
        """Standardisation statistics from raw ``SCALAR_FEATURES`` rows (the model's columns)."""
        x = torch.as_tensor(np.asarray(scalars)[:, self.input_cols], dtype=torch.float32)
        if self.cfg.ple_bins:  # bin edges: the training rows' quantiles of the raw values
            self.ple_edges.copy_(_column_quantiles(x, self.cfg.ple_bins + 1).to(self.ple_edges.device))
        if self.cfg.scalar_transform == "quantile":
            self.knots.copy_(_column_quantiles(x, QUANTILE_KNOTS).to(self.knots.device))
        x = self.transform_scalars(x.to(self.mean.device)).cpu()
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        for i, name in enumerate(self.cfg.scalar_features):
            if name in INDICATORS:
                mean[i], std[i] = 0.0, 1.0
        self.mean.copy_(mean.to(self.mean.device))
        self.std.copy_(std.to(self.std.device))

    def transform_scalars(self, x: torch.Tensor) -> torch.Tensor:
        """The model's columns of the raw scalars -> ``scalar_transform`` (before the z-score)."""
        kind = self.cfg.scalar_transform
        if kind == "standard":
            return x
        dense = self.dense_cols
        if kind == "log1p":
            return torch.where(dense, torch.sign(x) * torch.log1p(x.abs()), x)
        k = self.knots  # [F, K] ascending
        xt = x.T.contiguous()
        i = torch.searchsorted(k, xt).clamp(1, k.shape[1] - 1)
        lo, hi = k.gather(1, i - 1), k.gather(1, i)
        frac = ((xt - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)
        u = ((i - 1).to(x.dtype) + frac) / (k.shape[1] - 1)
        return torch.where(dense, u.T, x)

    def encode_ple(self, x: torch.Tensor) -> torch.Tensor:
        """The model's columns of the raw scalars [n, F] -> piecewise-linear encodings [n, F, ple_bins]."""
        lo, hi = self.ple_edges[:, :-1], self.ple_edges[:, 1:]  # [F, B]
        return ((x.unsqueeze(-1) - lo) / (hi - lo).clamp(min=1e-12)).clamp(0, 1)

    def _branch_scalars(self, m: str, z: torch.Tensor, ple: torch.Tensor | None,
                        q: torch.Tensor | None = None, p: torch.Tensor | None = None) -> torch.Tensor:
        parts = [z[:, self.idx[m]]]
        if ple is not None:
            parts.append(ple[:, self.ple_idx[m]].flatten(1))
        if m in self.bilinear:
            u, v = self.bilinear[m]
            parts.append((u(q) * v(p)).sum(-1, keepdim=True))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------------- forward
    def towers(self, q_text: torch.Tensor, p_text: torch.Tensor, p_image: torch.Tensor,
               scalars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_text, h_image, h_numeric, has_image): the masked modality outputs. ``scalars`` are the
        full ``SCALAR_FEATURES`` rows; without an image branch ``h_image`` and ``has_image`` are zeros."""
        has_image = scalars[:, self.has_image_idx:self.has_image_idx + 1].clamp(0, 1)
        raw = scalars[:, self.input_cols]
        z = (self.transform_scalars(raw) - self.mean) / self.std
        if self.training and self.cfg.input_noise > 0:
            z = z + self.cfg.input_noise * torch.randn_like(z) * self.dense_cols
        ple = self.encode_ple(raw) if self.cfg.ple_bins else None
        scale = float(self.cfg.dim)
        vt = vi = None
        if self.cfg.use_vectors:
            vt = q_text * p_text * scale
        h_t = self.branches["text"](vt, self._branch_scalars("text", z, ple, q_text, p_text))
        if self.has_image_branch:
            if self.cfg.use_vectors:
                vi = q_text * p_image * scale * has_image  # an absent image contributes nothing
            h_i = self.branches["image"](vi, self._branch_scalars("image", z, ple, q_text, p_image)) * has_image
        else:
            has_image = torch.zeros_like(has_image)
            h_i = torch.zeros_like(h_t)
        h_n = self.branches["numeric"](None, self._branch_scalars("numeric", z, ple))
        return h_t, h_i, h_n, has_image

    def forward(self, q_text: torch.Tensor, p_text: torch.Tensor, p_image: torch.Tensor,
                scalars: torch.Tensor) -> torch.Tensor:
        """Scores [n] for n pairs. Vectors are L2-normalised [n, dim]; scalars raw [n, S]."""
        h_t, h_i, h_n, has_image = self.towers(q_text, p_text, p_image, scalars)
        return self.fuse(h_t, h_i, h_n, has_image, q_text)

    def score_and_grade(self, q_text: torch.Tensor, p_text: torch.Tensor, p_image: torch.Tensor,
                        scalars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ranking scores [n], predicted normalised grades [n] or None without a grade head): one
        pass through the towers for both heads (training)."""
        h_t, h_i, h_n, has_image = self.towers(q_text, p_text, p_image, scalars)
        score = self.fuse(h_t, h_i, h_n, has_image, q_text)
        if not self.cfg.grade_head:
            return score, None
        return score, self.grade_net(torch.cat([h_t, h_i, h_n], dim=-1)).squeeze(-1)

    @property
    def has_grade_head(self) -> bool:
        return bool(self.cfg.grade_head)

    def grade(self, q_text: torch.Tensor, p_text: torch.Tensor, p_image: torch.Tensor,
              scalars: torch.Tensor) -> torch.Tensor:
        """Predicted normalised grade [n] (the grade head; the ranking score without one)."""
        score, grade = self.score_and_grade(q_text, p_text, p_image, scalars)
        return score if grade is None else grade

    @torch.no_grad()
    def score_arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 8192,
                     device: str | torch.device = "cpu") -> np.ndarray:
        return self._batched(self.forward, arrays, batch_size, device)

    @torch.no_grad()
    def grade_arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 8192,
                     device: str | torch.device = "cpu") -> np.ndarray:
        """Predicted normalised grades (the grade head) for the pairs of ``arrays``."""
        return self._batched(self.grade, arrays, batch_size, device)

    def _batched(self, fn, arrays: dict[str, np.ndarray], batch_size: int, device) -> np.ndarray:
        self.eval()
        n = len(arrays["scalars"])
        out = np.empty(n, dtype=np.float64)
        for s in range(0, n, batch_size):
            b = {k: torch.as_tensor(v[s:s + batch_size], dtype=torch.float32, device=device) for k, v in arrays.items()}
            out[s:s + batch_size] = fn(b["q_text"], b["p_text"], b["p_image"], b["scalars"]).float().cpu().numpy()
        return out

    # ------------------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        torch.save({"config": asdict(self.cfg), "state_dict": self.state_dict()}, path)

    # loading a saved model of any kind is mmpipeline.rank.fusion.load_ranker_file (the factory reads the
    # kind from the saved config; the base class does not import its subclasses)
