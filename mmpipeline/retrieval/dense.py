"""Dense vectors and exact cosine search.

* :class:`Vectors`: row-aligned ids and an (n, dim) float32 matrix (one modality, one model);
* :class:`DenseIndex`: exact cosine top-k over normalised vectors, in blocks (numpy matmul) -- the
  reference the approximate index (:mod:`mmpipeline.retrieval.ann`) is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Vectors:
    """Row-aligned ids and an (n, dim) float32 matrix."""

    ids: np.ndarray
    matrix: np.ndarray
    model_name: str | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        m = np.asarray(self.matrix, dtype=np.float32)
        self.matrix = m.reshape(len(self.ids), -1) if len(self.ids) else m.reshape(0, m.shape[-1] if m.ndim == 2 else 0)
        self.pos = {k: i for i, k in enumerate(self.ids)}

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1]) if len(self.ids) else 0

    def __len__(self) -> int:
        return len(self.ids)

    def restrict(self, keep: set) -> "Vectors":
        mask = np.fromiter((i in keep for i in self.ids), bool, len(self.ids))
        if mask.all():  # nothing to drop: no copy of the matrix (1.5 GB at 1M x 384)
            return self
        return Vectors(self.ids[mask], self.matrix[mask], self.model_name)

    @classmethod
    def empty(cls) -> "Vectors":
        return cls(np.array([], dtype=object), np.zeros((0, 0), np.float32))


def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


class DenseIndex:
    """Exact cosine search; vectors are L2-normalised on the way in."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, block: int = 1024):
        self.ids = np.asarray(list(ids), dtype=object)
        self.vectors = normalize(vectors) if len(self.ids) else np.zeros((0, 1), np.float32)
        self.block = block

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.ids)
        k = min(k, n)
        q = normalize(query_vectors)
        all_ids, all_scores = [], []
        for s in range(0, len(q), self.block):
            sims = q[s:s + self.block] @ self.vectors.T
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(sims), 1))
            ps = np.take_along_axis(sims, part, axis=1)
            order = np.argsort(-ps, axis=1, kind="stable")
            idx = np.take_along_axis(part, order, axis=1)
            all_ids.append(self.ids[idx])
            all_scores.append(np.take_along_axis(ps, order, axis=1))
        if not all_ids:
            return np.zeros((0, k), dtype=object), np.zeros((0, k), np.float32)
        return np.concatenate(all_ids), np.concatenate(all_scores).astype(np.float32)
