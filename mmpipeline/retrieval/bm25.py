"""Lexical retrieval over the whole catalog with bm25s (sparse matrices, fast on CPU).

One :class:`BM25Index` per catalog, over :func:`mmpipeline.retrieval.text.product_text`. Why not
sharded: bm25s stores eager BM25 scores (idf x term-frequency part) in one CSC sparse matrix, so
an index over ``N`` products costs about 12 bytes per (token, product) nonzero -- about 0.4 GB for
1M products of 30 distinct tokens -- and a query reads only its tokens' columns. Shards with their
own idf and average length would score the same product differently from the whole-catalog index
(so the ``bm25`` ranking feature would depend on the shard count); instead the index is built once
per run, saved with :meth:`BM25Index.save` and loaded memory-mapped (:meth:`BM25Index.load`) by
whoever needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mmpipeline.retrieval.text import tokenize


class BM25Index:
    """BM25 over one text per product; search returns product ids, ``score_pairs`` scores given pairs."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str] | None, k1: float = 1.5, b: float = 0.75,
                 retriever=None):
        import bm25s

        self.ids = np.asarray(list(ids), dtype=object)
        self._pos = {pid: i for i, pid in enumerate(self.ids)}
        self.path: Path | None = None  # the folder it was saved to / loaded from
        if retriever is not None:
            self.retriever = retriever
            return
        texts = list(texts or [])
        if len(texts) != len(self.ids):
            raise ValueError(f"BM25Index: {len(self.ids)} ids but {len(texts)} texts")
        self.retriever = bm25s.BM25(k1=k1, b=b)
        corpus = [tokenize(t) or ["__empty__"] for t in texts]
        self.retriever.index(corpus, show_progress=False)

    def save(self, path: str | Path) -> None:
        """The index and its product ids under the folder ``path``."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(p), show_progress=False)
        (p / "ids.json").write_text(json.dumps([str(i) for i in self.ids]), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "BM25Index":
        """An index written by :meth:`save`; ``mmap`` keeps the score matrix on disk (shared pages)."""
        import bm25s

        p = Path(path)
        ids = json.loads((p / "ids.json").read_text(encoding="utf-8"))
        out = cls(ids, None, retriever=bm25s.BM25.load(str(p), mmap=mmap, show_progress=False))
        out.path = p
        return out

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
