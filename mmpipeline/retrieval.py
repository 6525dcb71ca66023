"""Whole-catalog retrieval shared by evaluation (rank) and candidate generation (score).

* :class:`BM25Index`: lexical retrieval with bm25s (sparse matrices, fast on CPU);
* :class:`DenseIndex`: exact cosine top-k over normalised vectors, in blocks (numpy matmul).

Both return product ids and scores for a batch of queries, and score given (query, product) pairs
for use as ranking features.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str | None) -> list[str]:
    return _TOKEN.findall((text or "").lower())


class BM25Index:
    def __init__(self, ids: Sequence[str], texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        import bm25s

        self.ids = np.asarray(list(ids), dtype=object)
        self._pos = {pid: i for i, pid in enumerate(self.ids)}
        self._bm25s = bm25s
        self.retriever = bm25s.BM25(k1=k1, b=b)
        corpus = [tokenize(t) or ["__empty__"] for t in texts]
        self.retriever.index(corpus, show_progress=False)

    def _query_tokens(self, queries: Sequence[str]) -> list[list[str]]:
        return [tokenize(q) or ["__empty__"] for q in queries]

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` product ids and scores per query, shape (n_queries, k)."""
        k = min(k, len(self.ids))
        docs, scores = self.retriever.retrieve(self._query_tokens(queries), k=k, show_progress=False,
                                               n_threads=1)
        return self.ids[docs], scores.astype(np.float32)

    def scores_all(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every product, in index order."""
        return np.asarray(self.retriever.get_scores(self._query_tokens([query])[0]), dtype=np.float32)

    def score_pairs(self, queries: Sequence[str], product_ids: Sequence[str]) -> np.ndarray:
        """BM25 score for each (query, product) pair; unknown products score 0."""
        out = np.zeros(len(queries), dtype=np.float32)
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_query.setdefault(q, []).append(i)
        for q, rows in by_query.items():
            all_scores = self.scores_all(q)
            for i in rows:
                j = self._pos.get(product_ids[i])
                if j is not None:
                    out[i] = all_scores[j]
        return out


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
