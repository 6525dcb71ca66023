"""Candidate generation over the whole catalog: the ONE retrieval path of scoring and evaluation.

For each query: top K products by cosine between the query's text vector and the product text
vectors, top K against the product image vectors (the image tower lands in the text space, so a
text query searches photos directly), and top K by BM25 over the product text
(:func:`mmpipeline.retrieval.text.product_text`); the union is what the ranker scores. The score
stage publishes rankings of these candidates, and evaluation (``rank.evaluate``) reranks exactly
the same candidate set (:meth:`CandidateGenerator.from_featurizer`), so the promotion gate measures
what is published.

Dense search goes through :class:`mmpipeline.retrieval.ann.AnnIndex` (``score.ann``): exact FAISS
``IndexFlatIP`` below ``score.ann.exact_below`` vectors, a tuned IVF or HNSW index above; with an
:class:`~mmpipeline.retrieval.ann.AnnStore` the index is a saved, versioned artifact of the run date.

Each candidate row records which sources proposed it (``candidate_source``, e.g. ``bm25+text``); the
ranker's featuriser computes the model input for the pairs.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpipeline.retrieval.ann import AnnIndex, AnnStore
from mmpipeline.retrieval.bm25 import BM25Index
from mmpipeline.retrieval.dense import Vectors
from mmpipeline.retrieval.text import product_text

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import AnnConfig

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["query_id", "query", "product_id", "candidate_source"]
SOURCE_ORDER = ("text", "image", "bm25")


@dataclass
class CandidateGenerator:
    """Whole-catalog retrieval indexes built once per run.

    ``texts``: the BM25 text per product (:func:`product_text`), unless a prebuilt ``bm25`` index over
    that text is given. ``ann``: dense index settings (``score.ann``; None = defaults). With ``store``
    and ``run_date`` the dense indexes are saved artifacts (see :class:`AnnStore`); ``tune_vectors``
    (query vectors) tune approximate indexes to the queries they will serve.
    """

    product_ids: np.ndarray
    texts: pd.Series | None
    text_vectors: Vectors
    image_vectors: Vectors
    k: int
    sources: list[str] = field(default_factory=lambda: list(SOURCE_ORDER))
    query_batch_size: int = 256
    timings: dict[str, float] = field(default_factory=dict)
    ann: "AnnConfig | None" = None
    bm25: BM25Index | None = None
    store: AnnStore | None = None
    run_date: dt.date | None = None
    tune_vectors: np.ndarray | None = None
    dense: dict[str, AnnIndex] | None = None  # prebuilt dense indexes (loaded artifacts): nothing is built

    def __post_init__(self) -> None:
        from mmpipeline.config import AnnConfig

        if self.dense is not None:  # from saved artifacts (see from_artifacts): no vectors, no build
            self.product_ids = np.asarray(self.product_ids, dtype=object)
            self.ann = self.ann if self.ann is not None else AnnConfig()
            self.dense = {m: ix for m, ix in self.dense.items() if m in self.sources}
            if "bm25" not in self.sources:
                self.bm25 = None
            self._dims = {m: ix.dim for m, ix in self.dense.items()}
            return
        t0 = time.perf_counter()
        self.product_ids = np.asarray(self.product_ids, dtype=object)
        self.ann = self.ann if self.ann is not None else AnnConfig()
        catalog = set(self.product_ids)
        self.text_vectors = self.text_vectors.restrict(catalog) if len(self.text_vectors) else self.text_vectors
        self.image_vectors = self.image_vectors.restrict(catalog) if len(self.image_vectors) else self.image_vectors
        if "bm25" not in self.sources:
            self.bm25 = None
        elif self.bm25 is None:
            if self.texts is None:
                raise ValueError("CandidateGenerator needs the BM25 texts (product_text) or a prebuilt bm25 index")
            if self.store is not None and self.run_date is not None:
                self.bm25 = self.store.get_bm25(self.product_ids, list(self.texts), self.run_date)
            else:
                self.bm25 = BM25Index(self.product_ids, list(self.texts))
        self.timings["bm25_build"] = time.perf_counter() - t0
        self.dense = {}
        self._vecs = {"text": self.text_vectors, "image": self.image_vectors}
        for name, vec in self._vecs.items():
            if name in self.sources and len(vec):
                tune = self.tune_vectors if self.tune_vectors is not None and vec.dim == np.shape(self.tune_vectors)[-1] else None
                if self.store is not None and self.run_date is not None:
                    self.dense[name] = self.store.get(name, vec, self.run_date, self.ann, tune)
                else:
                    self.dense[name] = AnnIndex.build(vec.ids, vec.matrix, self.ann, tune)
        self.timings["index_build"] = time.perf_counter() - t0
        self._dims = {m: self._vecs[m].dim for m in self.dense}
        log.info("candidate indexes: %d products; bm25=%s, text vectors %d, image vectors %d (dense: %s)",
                 len(self.product_ids), self.bm25 is not None, len(self.text_vectors), len(self.image_vectors),
                 {m: ix.kind for m, ix in self.dense.items()} or "none")

    @classmethod
    def from_featurizer(cls, featurizer: Any, k: int, sources: list[str] | None = None,
                        ann: "AnnConfig | None" = None, query_batch_size: int = 256) -> "CandidateGenerator":
        """The generator over a :class:`~mmpipeline.retrieval.features.PairFeaturizer`'s catalog,
        reusing its BM25 index (the same :func:`product_text`) and its product vectors."""
        meta = getattr(featurizer, "meta", {}) or {}

        def vecs(mat: np.ndarray, has: np.ndarray, model: str | None) -> Vectors:
            sel = np.flatnonzero(has > 0)
            return Vectors(featurizer.ids[sel], mat[sel], model) if len(sel) else Vectors.empty()

        return cls(featurizer.ids, None, vecs(featurizer.p_text, featurizer.has_text, meta.get("text_model")),
                   vecs(featurizer.p_image, featurizer.has_image, meta.get("image_model")), k,
                   sources=list(sources or SOURCE_ORDER), query_batch_size=query_batch_size, ann=ann,
                   bm25=featurizer.bm25)

    def artifacts(self) -> dict[str, str]:
        """Folders of the saved indexes this generator uses ({"text"|"image"|"bm25": path}); complete
        only when every index came from an :class:`AnnStore` (see :meth:`from_artifacts`)."""
        out = {m: str(ix.info["path"]) for m, ix in self.dense.items() if ix.info.get("path")}
        if self.bm25 is not None and getattr(self.bm25, "path", None):
            out["bm25"] = str(self.bm25.path)
        return out

    @classmethod
    def from_artifacts(cls, paths: dict[str, str], k: int, sources: list[str],
                       query_batch_size: int = 256) -> "CandidateGenerator":
        """The generator over indexes saved by an :class:`AnnStore` (``artifacts()`` of the driver's
        generator): FAISS indexes and BM25 memory-mapped (the Python workers of a machine share one copy
        of the pages instead of holding 1.5 GB of IVF lists each at 1M products); the same candidates."""
        from mmpipeline.retrieval.bm25 import BM25Index

        dense = {m: AnnIndex.load(p, mmap=True) for m, p in paths.items() if m in ("text", "image") and m in sources}
        bm25 = BM25Index.load(paths["bm25"], mmap=True) if "bm25" in paths and "bm25" in sources else None
        ids = bm25.ids if bm25 is not None else (next(iter(dense.values())).ids if dense else np.array([], object))
        return cls(ids, None, Vectors.empty(), Vectors.empty(), k, sources=list(sources),
                   query_batch_size=query_batch_size, bm25=bm25, dense=dense)

    def candidate_lists(self, query_ids: list[str], queries: list[str], query_vectors: np.ndarray,
                        has_vector: np.ndarray) -> list[np.ndarray]:
        """Per query (in order), the candidate product ids (sorted, unique): the same union as
        :meth:`generate`, for callers that hold the query vectors as a matrix."""
        qids = [str(q) for q in query_ids]
        has = np.asarray(has_vector) > 0
        qv = Vectors(np.asarray(qids, dtype=object)[has], np.asarray(query_vectors)[has]) if has.any() else Vectors.empty()
        c = self.generate(pd.DataFrame({"query_id": qids, "query": list(queries)}), qv, progress=False)
        by_q = c.groupby("query_id", sort=False)["product_id"].agg(list).to_dict() if len(c) else {}
        return [np.asarray(sorted(by_q.get(q, [])), dtype=object) for q in qids]

    def generate(self, query_set: pd.DataFrame, query_vectors: Vectors, progress: bool = True) -> pd.DataFrame:
        """Candidates for every query of ``query_set`` (query_id, query): the union of the sources' top K."""
        from tqdm.auto import tqdm

        qdim = query_vectors.dim
        usable = {m: ix for m, ix in self.dense.items() if qdim and self._dims[m] == qdim}
        for m in set(self.dense) - set(usable):
            log.warning("candidates: %s vectors have dim %d but query vectors %d; %s retrieval skipped",
                        m, self._dims[m], qdim, m)
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
                    found = np.not_equal(ids, None).ravel()  # an approximate index may return fewer than k
                    rows_q.append(np.repeat(local, ids.shape[1])[found])
                    rows_p.append(ids.ravel()[found])
                    rows_s.append(np.full(int(found.sum()), m, dtype=object))
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
