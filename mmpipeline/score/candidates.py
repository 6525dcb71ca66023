"""Candidate generation over the whole catalog.

For each query: top K products by cosine between the query's text vector and the product text
vectors, top K against the product image vectors (the image tower lands in the text space, so a
text query searches photos directly), and top K by BM25 over the product text; the union is scored
by the champion. Search is exact (:class:`mmpipeline.retrieval.DenseIndex`, blocked matmul): at the
catalog sizes configured here (tens of thousands of products) one block of 256 queries against
45,000 x 384 vectors takes milliseconds, so an approximate index would add a dependency and lose
recall for no measurable gain (``mmpipeline bench score`` reports the dense search time).

Each candidate row records which sources proposed it (``candidate_source``, e.g. ``bm25+text``); the
ranker's featuriser computes the model input for the pairs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmpipeline.retrieval import BM25Index, DenseIndex

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["query_id", "query", "product_id", "candidate_source"]
SOURCE_ORDER = ("text", "image", "bm25")


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
        return Vectors(self.ids[mask], self.matrix[mask], self.model_name)

    @classmethod
    def empty(cls) -> "Vectors":
        return cls(np.array([], dtype=object), np.zeros((0, 0), np.float32))


def product_text(products: pd.DataFrame) -> pd.Series:
    """The text BM25 indexes: title, brand, category path and description where present."""
    parts = [products[c].fillna("").astype(str) for c in ("title", "brand", "category_path", "description")
             if c in products.columns]
    text = parts[0]
    for p in parts[1:]:
        text = text + " " + p
    return text.str.strip()


@dataclass
class CandidateGenerator:
    """Whole-catalog retrieval indexes built once per run."""

    product_ids: np.ndarray
    texts: pd.Series
    text_vectors: Vectors
    image_vectors: Vectors
    k: int
    sources: list[str] = field(default_factory=lambda: list(SOURCE_ORDER))
    query_batch_size: int = 256
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t0 = time.perf_counter()
        catalog = set(self.product_ids)
        self.text_vectors = self.text_vectors.restrict(catalog) if len(self.text_vectors) else self.text_vectors
        self.image_vectors = self.image_vectors.restrict(catalog) if len(self.image_vectors) else self.image_vectors
        self.bm25 = BM25Index(self.product_ids, list(self.texts)) if "bm25" in self.sources else None
        self.dense: dict[str, DenseIndex] = {}
        self._vecs = {"text": self.text_vectors, "image": self.image_vectors}
        for name, vec in self._vecs.items():
            if name in self.sources and len(vec):
                self.dense[name] = DenseIndex(vec.ids, vec.matrix)
        self.timings["index_build"] = time.perf_counter() - t0
        log.info("candidate indexes: %d products; bm25=%s, text vectors %d, image vectors %d (exact search)",
                 len(self.product_ids), self.bm25 is not None, len(self.text_vectors), len(self.image_vectors))

    def generate(self, query_set: pd.DataFrame, query_vectors: Vectors, progress: bool = True) -> pd.DataFrame:
        """Candidates for every query of ``query_set`` (query_id, query): the union of the sources' top K."""
        from tqdm.auto import tqdm

        qdim = query_vectors.dim
        usable = {m: ix for m, ix in self.dense.items() if qdim and self._vecs[m].dim == qdim}
        for m in set(self.dense) - set(usable):
            log.warning("candidates: %s vectors have dim %d but query vectors %d; %s retrieval skipped",
                        m, self._vecs[m].dim, qdim, m)
        frames = []
        t_dense = t_bm25 = 0.0
        n_novec = 0
        qs = query_set.reset_index(drop=True)
        bs = max(1, self.query_batch_size)
        for s in tqdm(range(0, len(qs), bs), desc="candidates", unit="block", disable=not progress or len(qs) <= bs):
            block = qs.iloc[s:s + bs]
            qids = block["query_id"].to_numpy(object)
            rows_q, rows_p, rows_s = [], [], []
            vec_rows = np.array([query_vectors.pos.get(q, -1) for q in qids], dtype=np.int64)
            has_vec = vec_rows >= 0
            n_novec += int((~has_vec).sum())
            if usable and has_vec.any():
                t0 = time.perf_counter()
                qv = query_vectors.matrix[vec_rows[has_vec]]
                local = np.flatnonzero(has_vec)
                for m, ix in usable.items():
                    ids, _ = ix.search(qv, self.k)
                    rows_q.append(np.repeat(local, ids.shape[1]))
                    rows_p.append(ids.ravel())
                    rows_s.append(np.full(ids.size, m, dtype=object))
                t_dense += time.perf_counter() - t0
            if self.bm25 is not None:
                t0 = time.perf_counter()
                ids, scores = self.bm25.search(list(block["query"].astype(str)), self.k)
                keep = scores > 0  # a BM25 score of 0 means no query term matched: not a candidate
                rows_q.append(np.repeat(np.arange(len(block)), ids.shape[1])[keep.ravel()])
                rows_p.append(ids.ravel()[keep.ravel()])
                rows_s.append(np.full(int(keep.sum()), "bm25", dtype=object))
                t_bm25 += time.perf_counter() - t0
            if not rows_q:
                continue
            long = pd.DataFrame({"qi": np.concatenate(rows_q), "product_id": np.concatenate(rows_p),
                                 "src": np.concatenate(rows_s)})
            long["order"] = long["src"].map({m: i for i, m in enumerate(SOURCE_ORDER)})
            long = long.sort_values(["qi", "product_id", "order"], kind="stable")
            agg = long.groupby(["qi", "product_id"], sort=True)["src"].agg("+".join).reset_index()
            agg["query_id"] = qids[agg["qi"].to_numpy()]
            agg["query"] = block["query"].to_numpy(object)[agg["qi"].to_numpy()]
            agg = agg.rename(columns={"src": "candidate_source"})
            frames.append(agg[CANDIDATE_COLUMNS])
        self.timings.update(dense_search=t_dense, bm25_search=t_bm25)
        if n_novec:
            log.warning("candidates: %d of %d queries have no query vector; BM25 candidates only for them",
                        n_novec, len(qs))
        out = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CANDIDATE_COLUMNS))
        log.info("candidates: %d pairs for %d queries (%.1f per query)", len(out), len(qs),
                 len(out) / max(len(qs), 1))
        return out


def candidate_recall(candidates: pd.DataFrame, judgments: pd.DataFrame | None, k: int,
                     min_grade: float | None = None) -> dict[str, float | int | None]:
    """Macro recall of judged-relevant products among the candidates, per source and for the union.

    Relevant = grade >= ``min_grade`` (default: any grade above the lowest grade in the judgments,
    i.e. "not irrelevant"). Only queries of the candidate set with at least one relevant judgment
    count. Returns ``{"recall_at_k_union": .., "recall_at_k_text": .., ..., "queries_judged": n}``.
    """
    out: dict[str, float | int | None] = {"k": int(k), "queries_judged": 0}
    if judgments is None or not len(judgments) or not len(candidates):
        return out
    grades = judgments["grade"].astype(float)
    thr = min_grade if min_grade is not None else None
    rel = judgments[grades >= thr] if thr is not None else judgments[grades > grades.min()]
    rel = rel[rel["query_id"].isin(set(candidates["query_id"]))][["query_id", "product_id"]].drop_duplicates()
    if not len(rel):
        return out
    n_rel = rel.groupby("query_id").size()
    out["queries_judged"] = int(len(n_rel))
    out["relevant_pairs"] = int(len(rel))
    hit = rel.merge(candidates[["query_id", "product_id", "candidate_source"]], on=["query_id", "product_id"], how="left")
    src = hit["candidate_source"].fillna("")
    used = set("+".join(candidates["candidate_source"].unique()).split("+"))
    for name, mask in [("union", src != "")] + [(m, src.str.split("+").apply(lambda s, m=m: m in s))
                                                 for m in SOURCE_ORDER]:
        if name != "union" and name not in used:  # e.g. no image vectors in this catalog
            out[f"recall_at_k_{name}"] = None
            continue
        per_q = mask.groupby(hit["query_id"]).sum() / n_rel
        out[f"recall_at_k_{name}"] = round(float(per_q.mean()), 4)
    return out
