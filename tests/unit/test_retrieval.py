"""Whole-catalog retrieval used by evaluation and candidate generation."""

import numpy as np

from mmpipeline.retrieval import BM25Index, DenseIndex, tokenize


def test_tokenize_is_lowercase_alnum():
    assert tokenize("Men's Navy-Blue SHIRT 2pk") == ["men", "s", "navy", "blue", "shirt", "2pk"]
    assert tokenize(None) == []


def test_bm25_ranks_lexical_matches_first_and_scores_pairs():
    idx = BM25Index(["p1", "p2", "p3", "p4"], ["red cotton shirt", "blue denim jeans", "red summer dress", ""])
    ids, scores = idx.search(["red shirt", "jeans"], k=2)
    assert ids[0, 0] == "p1" and ids[1, 0] == "p2"
    assert scores.shape == (2, 2) and scores[0, 0] >= scores[0, 1]
    pair = idx.score_pairs(["red shirt", "red shirt", "red shirt"], ["p1", "p2", "unknown"])
    assert pair[0] > 0 and pair[1] == 0 and pair[2] == 0


def test_dense_exact_topk_matches_bruteforce():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(500, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    idx = DenseIndex([f"p{i}" for i in range(500)], vecs, block=3)
    ids, scores = idx.search(q, k=10)
    vn = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    want = np.argsort(-(qn @ vn.T), axis=1)[:, :10]
    assert (ids == np.array([f"p{i}" for i in range(500)], dtype=object)[want]).all()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    ids_all, _ = idx.search(q[:1], k=1000)  # k larger than the catalog
    assert ids_all.shape == (1, 500)
