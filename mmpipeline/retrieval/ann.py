"""Dense candidate search with FAISS: exact below a catalog size, IVF or HNSW above it.

:class:`AnnIndex` wraps one FAISS inner-product index over L2-normalised vectors (cosine), with the
same ``search(query_vectors, k) -> (ids, scores)`` as the exact numpy :class:`~mmpipeline.retrieval.dense.DenseIndex`:

* ``exact``: ``IndexFlatIP`` (brute force, BLAS): the default below ``score.ann.exact_below`` vectors;
* ``ivf``: ``IndexIVFFlat`` (``nlist`` k-means cells trained on a seeded sample, ``nprobe`` cells
  visited per query);
* ``hnsw``: ``IndexHNSWFlat`` (graph, ``M`` links, ``efSearch`` candidates per query).

Approximate indexes are tuned when built: ``nprobe`` / ``efSearch`` doubles from the configured
value until recall@``tune_k`` against exact search on sampled query vectors reaches
``target_recall`` (both in ``score.ann``); the measured recall is kept with the index.

:class:`AnnStore` makes the index a nightly artifact next to the lake:
``<lake>/_artifacts/ann/<model>/<modality>/<run_date>/<fingerprint>/`` (``index.faiss``,
``ids.json``, ``meta.json``), where the fingerprint hashes the vectors, their ids, the index
settings and the FAISS version. A re-run of a date with the same vectors loads the saved index
(the same index, bit for bit) instead of building another; new vectors get a new folder, so an
artifact is never overwritten or deleted. Each get is recorded in ``ops.retrieval_indexes``. The
BM25 index is kept the same way (:meth:`AnnStore.get_bm25`: ``<lake>/_artifacts/bm25/<run_date>/<fp>``,
loaded memory-mapped).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mmpipeline.retrieval.dense import Vectors, normalize

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import AnnConfig

log = logging.getLogger(__name__)

OPS_TABLE = "ops.retrieval_indexes"
_SEARCH_BLOCK = 4096
_MAX_EF = 4096


def _faiss():
    import faiss

    return faiss


def choose_kind(n: int, cfg: "AnnConfig") -> str:
    """exact | ivf | hnsw for a catalog of ``n`` vectors under ``cfg``."""
    if cfg.kind == "auto":
        return "exact" if n < cfg.exact_below else cfg.auto_kind
    if cfg.kind == "ivf" and n < 39 * 16:  # too few vectors to train even 16 cells
        return "exact"
    return cfg.kind


# rows of the catalog a build normalises / a ground-truth search scans at a time (bounded memory)
BLOCK_ROWS = 65_536


def _blocks(vectors: np.ndarray, norm: bool):
    """(start, contiguous float32 block) over ``vectors``, each block normalised when ``norm``."""
    for s in range(0, len(vectors), BLOCK_ROWS):
        b = vectors[s:s + BLOCK_ROWS]
        yield s, np.ascontiguousarray(normalize(b) if norm else b, dtype=np.float32)


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, norm: bool = False) -> np.ndarray:
    """Row numbers of the exact top ``k`` by inner product, shape (nq, k): FAISS IndexFlatIP over one
    block of ``base`` at a time with a running top-k (no second copy of the catalog); ``norm``
    normalises each block on the way."""
    faiss = _faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(base))
    best_d = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s, block in _blocks(base, norm):
        flat = faiss.IndexFlatIP(block.shape[1])
        flat.add(block)
        d, i = flat.search(q, min(k, len(block)))
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, np.where(i >= 0, i + s, -1)], axis=1)
        top = np.argsort(-d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, top, axis=1), np.take_along_axis(i, top, axis=1)
    return best_i


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (row numbers; -1 = no result)."""
    if not len(exact):
        return float("nan")
    hits = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(int((e >= 0).sum()), 1)
            for a, e in zip(approx, exact)]
    return float(np.mean(hits))


class AnnIndex:
    """A FAISS inner-product index over normalised vectors plus the product ids of its rows."""

    def __init__(self, ids: Sequence[str], index: Any, kind: str, params: dict[str, Any],
                 info: dict[str, Any] | None = None):
        self.ids = np.asarray(list(ids), dtype=object)
        self.index = index
        self.kind = kind
        self.params = dict(params)
        self.info = dict(info or {})  # measured at build: recall, tune_k, tune_queries, build_seconds

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    # ------------------------------------------------------------------------------ build
    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, cfg: "AnnConfig",
              tune_vectors: np.ndarray | None = None) -> "AnnIndex":
        """Build (and for ivf / hnsw, tune) the index ``cfg`` asks for over ``vectors``."""
        faiss = _faiss()
        if cfg.threads:
            faiss.omp_set_num_threads(int(cfg.threads))
        t0 = time.perf_counter()
        # normalised block by block into the index: the catalog is held once by the caller and once by
        # the index, never a third time as a normalised copy (at 1M x 384 each copy is 1.5 GB)
        x = np.asarray(vectors, dtype=np.float32) if len(vectors) else np.zeros((0, 1), np.float32)
        n, d = x.shape

        def add_all(index: Any) -> None:
            for _, block in _blocks(x, True):
                index.add(block)

        kind = choose_kind(n, cfg)
        params: dict[str, Any] = {}
        if kind == "exact":
            index = faiss.IndexFlatIP(d)
            add_all(index)
        elif kind == "ivf":
            nlist = int(cfg.ivf_nlist or max(16, round(4 * np.sqrt(n))))
            nlist = max(1, min(nlist, n // 39))  # FAISS wants >= 39 training points per cell
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = int(cfg.seed)
            n_train = min(n, max(int(cfg.ivf_train_size), 39 * nlist))
            rng = np.random.default_rng(cfg.seed)
            sample = x if n_train >= n else x[np.sort(rng.choice(n, n_train, replace=False))]
            index.train(np.ascontiguousarray(normalize(sample)))
            add_all(index)
            index.nprobe = min(int(cfg.ivf_nprobe), nlist)
            params = {"nlist": nlist, "nprobe": int(index.nprobe), "train_size": int(n_train)}
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(cfg.hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(cfg.hnsw_ef_construction)
            add_all(index)
            index.hnsw.efSearch = int(cfg.hnsw_ef_search)
            params = {"M": int(cfg.hnsw_m), "efConstruction": int(cfg.hnsw_ef_construction),
                      "efSearch": int(index.hnsw.efSearch)}
        else:  # pragma: no cover - the config's Literal forbids it
            raise ValueError(f"unknown score.ann.kind {kind!r}")
        out = cls(ids, index, kind, params)
        if len(out.ids) != n:
            raise ValueError(f"AnnIndex: {len(out.ids)} ids but {n} vectors")
        out.info["build_seconds"] = time.perf_counter() - t0
        if kind != "exact" and cfg.tune_queries > 0 and n:
            out.tune(x, cfg, tune_vectors)
        elif kind == "exact":
            out.info.update(recall=1.0, tune_k=int(cfg.tune_k), tune_queries=0)
        out.info["seconds"] = time.perf_counter() - t0
        log.info("ann index: %s over %d vectors (dim %d) %s; recall@%s vs exact %s; %.1fs",
                 kind, n, d, params, out.info.get("tune_k"), out.info.get("recall"), out.info["seconds"])
        return out

    def tune(self, base: np.ndarray, cfg: "AnnConfig", tune_vectors: np.ndarray | None = None) -> float:
        """Raise nprobe / efSearch until recall@tune_k vs exact reaches ``cfg.target_recall``.
        ``base``: the catalog vectors as given to :meth:`build` (normalised here, block by block)."""
        rng = np.random.default_rng(cfg.seed + 1)
        if tune_vectors is not None and len(tune_vectors):
            q = normalize(tune_vectors)
            if len(q) > cfg.tune_queries:
                q = q[np.sort(rng.choice(len(q), cfg.tune_queries, replace=False))]
        else:  # catalog vectors as queries
            q = normalize(base[np.sort(rng.choice(len(base), min(cfg.tune_queries, len(base)), replace=False))])
        k = min(int(cfg.tune_k), len(base))
        truth = exact_topk(base, q, k, norm=True)
        while True:
            _, approx = self.index.search(np.ascontiguousarray(q), k)
            rec = recall_at_k(approx, truth)
            if rec >= cfg.target_recall or not self._widen():
                break
        self.info.update(recall=round(rec, 4), tune_k=k, tune_queries=int(len(q)))
        if rec < cfg.target_recall:
            log.warning("ann index: %s reaches recall@%d %.3f < target %.2f at its widest setting %s",
                        self.kind, k, rec, cfg.target_recall, self.params)
        return rec

    def _widen(self) -> bool:
        """Double nprobe / efSearch; False when already at the widest setting."""
        if self.kind == "ivf":
            nlist = self.params["nlist"]
            if self.index.nprobe >= nlist:
                return False
            self.index.nprobe = min(nlist, self.index.nprobe * 2)
            self.params["nprobe"] = int(self.index.nprobe)
            return True
        if self.kind == "hnsw":
            if self.index.hnsw.efSearch >= _MAX_EF:
                return False
            self.index.hnsw.efSearch = min(_MAX_EF, self.index.hnsw.efSearch * 2)
            self.params["efSearch"] = int(self.index.hnsw.efSearch)
            return True
        return False

    def _apply_params(self) -> None:
        if self.kind == "ivf":
            self.index.nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params["efSearch"])

    # ------------------------------------------------------------------------------ search
    def search_rows(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers (-1 = none) and cosine scores of the top ``k`` per query, shape (nq, k)."""
        k = min(int(k), len(self.ids))
        q = np.ascontiguousarray(normalize(query_vectors)) if len(query_vectors) else np.zeros((0, self.dim), np.float32)
        if k <= 0 or not len(q):
            return np.zeros((len(q), max(k, 0)), np.int64), np.zeros((len(q), max(k, 0)), np.float32)
        rows, scores = [], []
        for s in range(0, len(q), _SEARCH_BLOCK):
            sc, ix = self.index.search(q[s:s + _SEARCH_BLOCK], k)
            rows.append(ix)
            scores.append(sc)
        return np.concatenate(rows).astype(np.int64), np.concatenate(scores).astype(np.float32)

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` product ids and cosine scores per query, shape (nq, k); where an approximate
        index finds fewer than ``k`` the id is None and the score -inf."""
        rows, scores = self.search_rows(query_vectors, k)
        ok = rows >= 0
        ids = np.full(rows.shape, None, dtype=object)
        ids[ok] = self.ids[rows[ok]]
        return ids, np.where(ok, scores, -np.inf).astype(np.float32)

    # ------------------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        faiss = _faiss()
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(p / "index.faiss"))
        (p / "ids.json").write_text(json.dumps([str(i) for i in self.ids]), encoding="utf-8")
        meta = {"kind": self.kind, "params": self.params, "info": self.info, "n": len(self.ids), "dim": self.dim,
                "faiss": faiss.__version__}
        (p / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> "AnnIndex":
        faiss = _faiss()
        p = Path(path)
        meta = json.loads((p / "meta.json").read_text(encoding="utf-8"))
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(p / "index.faiss"), flags)
        ids = json.loads((p / "ids.json").read_text(encoding="utf-8"))
        out = cls(ids, index, meta["kind"], meta["params"], meta.get("info"))
        out._apply_params()
        return out


# ---------------------------------------------------------------------------------- artifacts


def fingerprint(ids: np.ndarray, matrix: np.ndarray, cfg: "AnnConfig") -> str:
    """sha256 of the ids, the vectors, the index settings and the FAISS version."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.model_dump(exclude={"threads", "save"}), sort_keys=True).encode())
    h.update(_faiss().__version__.encode())
    h.update(str(matrix.shape).encode())
    for i in ids:
        h.update(str(i).encode("utf-8"))
        h.update(b"\x1f")
    h.update(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
    return h.hexdigest()


def _safe(name: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name or "unknown")).strip("._") or "unknown"


class AnnStore:
    """Saved ANN indexes under ``root`` (``<lake>/_artifacts/ann``); records in ``ops.retrieval_indexes``
    when a lake is given."""

    def __init__(self, root: str | Path, lake: Any = None):
        self.root = Path(root)
        self.lake = lake

    @classmethod
    def for_lake(cls, lake: Any) -> "AnnStore":
        return cls(Path(lake.root) / "_artifacts" / "ann", lake)

    def get_bm25(self, ids: np.ndarray, texts: Sequence[str], run_date: dt.date, k1: float = 1.5,
                 b: float = 0.75) -> Any:
        """The BM25 index over ``texts`` for ``run_date``: loaded (memory-mapped) when saved before for
        the same ids and texts, else built and saved atomically; recorded like the dense indexes."""
        from mmpipeline.retrieval.bm25 import BM25Index

        t0 = time.perf_counter()
        texts = [str(t) for t in texts]
        h = hashlib.sha256(f"bm25s|k1={k1}|b={b}|".encode())
        for i, t in zip(ids, texts):
            h.update(str(i).encode("utf-8") + b"\x1f" + t.encode("utf-8") + b"\x1e")
        fp = h.hexdigest()
        folder = self.root.parent / "bm25" / str(run_date) / fp[:16]
        reused = (folder / "ids.json").is_file()
        if reused:
            index = BM25Index.load(folder, mmap=True)
        else:
            index = BM25Index(ids, texts, k1=k1, b=b)
            tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
            index.save(tmp)
            try:
                os.replace(tmp, folder)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        index.path = folder  # where workers load it from (CandidateGenerator.from_artifacts)
        seconds = time.perf_counter() - t0
        log.info("bm25 index: %s %s (%d products, %.1fs)", "loaded" if reused else "saved", folder, len(ids), seconds)
        if self.lake is not None:
            import pandas as pd

            self._record_once(pd.DataFrame([{
                "run_date": run_date, "modality": "bm25", "model_name": "bm25s", "kind": "bm25",
                "params": json.dumps({"k1": k1, "b": b}), "vectors": len(ids), "dim": None, "fingerprint": fp,
                "path": str(folder), "reused": reused, "build_seconds": None if reused else seconds,
                "recall": None, "recall_k": None, "tune_queries": None,
                "recorded_at": dt.datetime.now(dt.timezone.utc),
            }]))
        return index

    def folder(self, model: str | None, modality: str, run_date: dt.date, fp: str) -> Path:
        return self.root / _safe(model) / _safe(modality) / str(run_date) / fp[:16]

    def get(self, modality: str, vectors: Vectors, run_date: dt.date, cfg: "AnnConfig",
            tune_vectors: np.ndarray | None = None) -> AnnIndex:
        """The index over ``vectors`` for ``run_date``: loaded when this exact one was saved before,
        else built, saved (atomically: a temporary folder renamed into place) and recorded."""
        t0 = time.perf_counter()
        fp = fingerprint(vectors.ids, vectors.matrix, cfg)
        folder = self.folder(vectors.model_name, modality, run_date, fp)
        reused = (folder / "meta.json").is_file()
        if reused:
            index = AnnIndex.load(folder)
            log.info("ann index: loaded %s (%s, %d vectors)", folder, index.kind, len(index))
        else:
            index = AnnIndex.build(vectors.ids, vectors.matrix, cfg, tune_vectors)
            tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
            index.save(tmp)
            try:
                os.replace(tmp, folder)
            except OSError:  # a concurrent run saved the same index first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            log.info("ann index: saved %s", folder)
        index.info.update(fingerprint=fp, path=str(folder), reused=reused,
                          get_seconds=time.perf_counter() - t0)
        if self.lake is not None:
            self.record(modality, vectors.model_name, run_date, index)
        return index

    def record(self, modality: str, model: str | None, run_date: dt.date, index: AnnIndex) -> None:
        import pandas as pd

        i = index.info
        self._record_once(pd.DataFrame([{
            "run_date": run_date, "modality": modality, "model_name": model, "kind": index.kind,
            "params": json.dumps(index.params, sort_keys=True), "vectors": len(index), "dim": index.dim,
            "fingerprint": i.get("fingerprint"), "path": i.get("path"), "reused": bool(i.get("reused")),
            "build_seconds": i.get("seconds") if not i.get("reused") else None,
            "recall": i.get("recall"), "recall_k": i.get("tune_k"), "tune_queries": i.get("tune_queries"),
            "recorded_at": dt.datetime.now(dt.timezone.utc),
        }]))

    def _record_once(self, row: "pd.DataFrame") -> None:
        """Merge the record unless a re-run loaded the very index already recorded for this date and
        model: a re-run of a date leaves ``ops.retrieval_indexes`` unchanged (no new version)."""
        r = row.iloc[0]
        if bool(r["reused"]) and self.lake.exists(OPS_TABLE):
            old = self.lake.read_pandas(OPS_TABLE, columns=["model_name", "fingerprint"], filters=[
                ("run_date", "=", r["run_date"]), ("modality", "=", r["modality"])])
            if ((old["model_name"] == r["model_name"]) & (old["fingerprint"] == r["fingerprint"])).any():
                return
        self.lake.merge(OPS_TABLE, row)
