"""FAISS candidate search: exact equals numpy, approximate recall vs exact, saved artifacts reload."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mmpipeline.config import AnnConfig, Config
from mmpipeline.retrieval.ann import AnnIndex, AnnStore, choose_kind, exact_topk, recall_at_k
from mmpipeline.retrieval.candidates import CandidateGenerator
from mmpipeline.retrieval.dense import DenseIndex, Vectors, normalize


def _clustered(n: int, dim: int = 32, clusters: int = 64, seed: int = 0, noise: float = 0.35) -> np.ndarray:
    """Vectors around random centres: the shape of real embeddings (topics), unlike iid noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))).astype(np.float32)


def _ids(n: int) -> list[str]:
    return [f"p{i:06d}" for i in range(n)]


def test_exact_path_equals_numpy():
    x = _clustered(3000, seed=1)
    q = _clustered(50, seed=2)
    ann = AnnIndex.build(_ids(3000), x, AnnConfig(kind="exact"))
    ref = DenseIndex(_ids(3000), x, block=7)
    ids_a, sc_a = ann.search(q, 25)
    ids_n, sc_n = ref.search(q, 25)
    assert ann.kind == "exact" and ann.info["recall"] == 1.0
    np.testing.assert_allclose(sc_a, sc_n, atol=1e-5)
    # same ids wherever the numpy scores are not tied (float32 ties may swap order)
    untied = np.abs(np.diff(sc_n, axis=1, append=-9)) > 1e-5
    assert (ids_a[untied] == ids_n[untied]).all()
    # and the auto setting is exact below the threshold
    assert choose_kind(3000, AnnConfig()) == "exact" and choose_kind(10**6, AnnConfig()) == "ivf"


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_vs_exact_on_random_vectors(kind):
    n, k = 12_000, 100
    both = _clustered(n + 300, seed=3)
    x, held_out = both[:n], both[n:]  # held-out queries from the same topics, never seen by the tuning
    cfg = AnnConfig(kind=kind, ivf_nprobe=1, hnsw_ef_search=16, hnsw_m=16, hnsw_ef_construction=64,
                    target_recall=0.95, tune_k=k, tune_queries=200, threads=1)
    ix = AnnIndex.build(_ids(n), x, cfg)
    assert ix.kind == kind and ix.info["recall"] >= 0.95
    truth = exact_topk(normalize(x), normalize(held_out), k)
    rows, _ = ix.search_rows(held_out, k)
    assert recall_at_k(rows, truth) >= 0.95
    # the tuning is what gets it there: the configured starting point alone is far worse
    untuned = AnnIndex.build(_ids(n), x, cfg.model_copy(update={"tune_queries": 0}))
    rows0, _ = untuned.search_rows(held_out, k)
    assert recall_at_k(rows0, truth) < 0.9
    if kind == "ivf":
        assert ix.params["nprobe"] > 1 and ix.params["nlist"] == min(round(4 * np.sqrt(n)), n // 39)


def test_saved_index_reloads_to_the_same_results_and_is_recorded(tmp_path):
    from mmpipeline.lake import Lake

    x = _clustered(4000, seed=5)
    q = _clustered(40, seed=6)
    vec = Vectors(np.array(_ids(4000), dtype=object), x, "mini/lm")
    lake = Lake(tmp_path / "lake", engine="delta-rs")
    store = AnnStore.for_lake(lake)
    cfg = AnnConfig(kind="ivf", tune_queries=100, tune_k=50)
    day = dt.date(2026, 11, 20)
    first = store.get("text", vec, day, cfg)
    path = first.info["path"]
    assert path.startswith(str(tmp_path / "lake" / "_artifacts" / "ann" / "mini_lm" / "text" / "2026-11-20"))
    again = store.get("text", vec, day, cfg)  # a re-run of the date: loaded, not rebuilt
    assert again.info["reused"] and not first.info["reused"] and again.info["path"] == path
    assert again.params == first.params and again.kind == "ivf"
    for a, b in zip(first.search(q, 50), again.search(q, 50)):
        np.testing.assert_array_equal(a, b)
    loaded = AnnIndex.load(path, mmap=True)
    np.testing.assert_array_equal(loaded.search(q, 50)[0], first.search(q, 50)[0])
    # new vectors for the same date: a new artifact beside the old one (nothing overwritten)
    changed = store.get("text", Vectors(vec.ids, x * 1.5 + 0.01, "mini/lm"), day, cfg)
    assert changed.info["path"] != path and (tmp_path / "lake").joinpath(path).exists()
    ops = lake.read_pandas("ops.retrieval_indexes")
    assert len(ops) == 1  # one row per (run date, modality, model): the latest attempt
    row = ops.iloc[0]
    assert row["path"] == changed.info["path"] and row["kind"] == "ivf" and row["vectors"] == 4000
    assert not row["reused"] and 0.95 <= row["recall"] <= 1.0


def test_candidate_generator_uses_the_configured_index_and_artifacts(tmp_path):
    from mmpipeline.lake import Lake

    n = 2000
    x = _clustered(n, seed=7)
    ids = np.array(_ids(n), dtype=object)
    texts = pd.Series([f"item {i}" for i in range(n)])
    qids = np.array(["q1", "q2", "q3"], dtype=object)
    qv = Vectors(qids, x[[5, 500, 1500]] + 0.01)
    qs = pd.DataFrame({"query_id": qids, "query": ["item 5", "nothing", "item 1500"]})
    exact = CandidateGenerator(ids, texts, Vectors(ids, x, "m"), Vectors.empty(), k=30, ann=AnnConfig(kind="exact"))
    lake = Lake(tmp_path / "lake", engine="delta-rs")
    approx = CandidateGenerator(ids, texts, Vectors(ids, x, "m"), Vectors.empty(), k=30,
                                ann=AnnConfig(kind="hnsw", tune_k=30, tune_queries=200), store=AnnStore.for_lake(lake),
                                run_date=dt.date(2026, 11, 20), tune_vectors=qv.matrix)
    assert approx.dense["text"].kind == "hnsw" and exact.dense["text"].kind == "exact"
    a = exact.generate(qs, qv, progress=False)
    b = approx.generate(qs, qv, progress=False)
    key = ["query_id", "product_id"]
    overlap = len(a[key].merge(b[key])) / len(a)
    assert overlap >= 0.95
    ops = lake.read_pandas("ops.retrieval_indexes").sort_values("kind")
    assert ops["kind"].tolist() == ["bm25", "hnsw"] and ops["path"].str.contains("_artifacts").all()
    # a re-run of the date loads both saved indexes and proposes the same candidates
    v_ops = lake.version("ops.retrieval_indexes")
    again = CandidateGenerator(ids, texts, Vectors(ids, x, "m"), Vectors.empty(), k=30,
                               ann=AnnConfig(kind="hnsw", tune_k=30, tune_queries=200), store=AnnStore.for_lake(lake),
                               run_date=dt.date(2026, 11, 20), tune_vectors=qv.matrix)
    assert all(i.info["reused"] for i in again.dense.values()) and again.bm25 is not None
    assert lake.version("ops.retrieval_indexes") == v_ops  # the re-run records nothing new: no new version
    pd.testing.assert_frame_equal(b, again.generate(qs, qv, progress=False))


def test_ann_config_shorthand_and_knobs():
    assert Config.model_validate({"score": {"ann": "exact"}}).score.ann.kind == "exact"
    c = Config.model_validate({"score": {"ann": {"kind": "hnsw", "hnsw_m": 48}}})
    assert c.score.ann.kind == "hnsw" and c.score.ann.hnsw_m == 48
    with pytest.raises(Exception, match="kind"):
        Config.model_validate({"score": {"ann": {"kind": "lsh"}}})


def test_exact_topk_and_builds_scan_the_catalog_in_blocks(monkeypatch):
    """Ground truth and index builds go through the catalog a block at a time (no normalised copy of
    the whole catalog): the same top lists as a one-shot numpy search, the same index contents."""
    from mmpipeline.config import AnnConfig
    from mmpipeline.retrieval import ann

    rng = np.random.default_rng(5)
    base = rng.standard_normal((1000, 16)).astype(np.float32) * rng.uniform(0.5, 3, (1000, 1)).astype(np.float32)
    q = normalize(rng.standard_normal((40, 16)).astype(np.float32))
    want = np.argsort(-(q @ normalize(base).T), axis=1, kind="stable")[:, :25]
    monkeypatch.setattr(ann, "BLOCK_ROWS", 96)
    np.testing.assert_array_equal(ann.exact_topk(base, q, 25, norm=True), want)
    np.testing.assert_array_equal(ann.exact_topk(normalize(base), q, 25), want)
    for kind in ("exact", "ivf"):
        ix = AnnIndex.build([f"p{i}" for i in range(1000)], base, AnnConfig(kind=kind, tune_queries=40))
        assert ix.index.ntotal == 1000 and ix.info["recall"] >= 0.95
    ids, _ = AnnIndex.build([f"p{i}" for i in range(1000)], base, AnnConfig(kind="exact")).search(q, 25)
    assert (ids == np.array([f"p{i}" for i in range(1000)], dtype=object)[want]).all()
