"""The incremental plan and the small pure helpers of the embed stage."""

import numpy as np
import pandas as pd

from mmpipeline.embed.data import build_text, plan_incremental, text_hash
from mmpipeline.embed.tower.train import holdout_mask, recall_at_k


def _cur(rows):
    return pd.DataFrame(rows, columns=["id", "content_hash"])


def _ex(rows):
    return pd.DataFrame(rows, columns=["id", "content_hash", "model_version"])


def test_first_run_encodes_everything():
    p = plan_incremental(_cur([("a", "h1"), ("b", "h2")]), None, "v1")
    assert sorted(p.encode) == ["a", "b"] and p.reuse == [] and p.delete == []
    assert p.reasons == {"new": 2, "changed": 0, "model": 0}


def test_only_new_changed_and_other_model_versions_are_encoded():
    cur = _cur([("a", "h1"), ("b", "h2-new"), ("c", "h3"), ("d", "h4")])
    ex = _ex([("a", "h1", "v1"), ("b", "h2", "v1"), ("c", "h3", "v0"), ("gone", "hx", "v1")])
    p = plan_incremental(cur, ex, "v1")
    assert sorted(p.encode) == ["b", "c", "d"]
    assert p.reuse == ["a"]
    assert p.delete == ["gone"]
    assert p.reasons == {"new": 1, "changed": 1, "model": 1}


def test_identical_second_run_encodes_nothing():
    cur = _cur([("a", "h1"), ("b", "h2")])
    p = plan_incremental(cur, _ex([("a", "h1", "v1"), ("b", "h2", "v1")]), "v1")
    assert p.encode == [] and sorted(p.reuse) == ["a", "b"] and p.delete == []


def test_full_refresh_reencodes_all_but_still_deletes_gone_rows():
    cur = _cur([("a", "h1")])
    p = plan_incremental(cur, _ex([("a", "h1", "v1"), ("z", "h9", "v1")]), "v1", full_refresh=True)
    assert p.encode == ["a"] and p.reuse == [] and p.delete == ["z"]


def test_known_failures_are_not_retried_until_content_or_model_changes():
    cur = _cur([("a", "h1"), ("b", "h2")])
    fails = _ex([("a", "h1", "v1"), ("b", "old", "v1")])
    p = plan_incremental(cur, None, "v1", failures=fails)
    assert p.known_bad == ["a"] and p.encode == ["b"] and p.reuse == []
    p2 = plan_incremental(cur, None, "v2", failures=fails)  # new model: retry
    assert sorted(p2.encode) == ["a", "b"]
    p3 = plan_incremental(cur, None, "v1", full_refresh=True, failures=fails)
    assert sorted(p3.encode) == ["a", "b"]


def test_custom_id_column_and_duplicates():
    cur = pd.DataFrame({"product_id": ["a", "a", "b"], "content_hash": ["h", "h", "g"]})
    ex = pd.DataFrame({"product_id": ["b"], "content_hash": ["g"], "model_version": ["v"]})
    p = plan_incremental(cur, ex, "v", id_col="product_id")
    assert p.encode == ["a"] and p.reuse == ["b"]


def test_build_text_and_hash():
    assert build_text(["  Navy  Shirt ", None, float("nan"), "", "Navy Shirt", "Cotton"]) == "Navy Shirt. Cotton"
    assert build_text([None, ""]) == ""
    assert text_hash("x", 128) != text_hash("x", 64) != text_hash("y", 64)


def test_recall_at_k_and_holdout():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 8))
    assert recall_at_k(items, items, 1) == 1.0
    # known ranks: query i's own item is 1st for even i and 3rd for odd i (two other items closer)
    n = 40
    eye = np.eye(n)
    q = eye.copy()
    for i in range(1, n, 2):
        q[i] = 0.5 * eye[i] + 0.8 * eye[(i + 1) % n] + 0.7 * eye[(i + 2) % n]
    assert recall_at_k(q, eye, 1) == 0.5
    assert recall_at_k(q, eye, 2) == 0.5
    assert recall_at_k(q, eye, 3) == 1.0
    # unrelated vectors: about k / n of the queries find their own item (not everything, as k = n would)
    r = recall_at_k(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), 10)
    assert r < 0.1
    m = holdout_mask([str(i) for i in range(2000)], 0.1)
    assert 0.07 < m.mean() < 0.13
    assert (m == holdout_mask([str(i) for i in range(2000)], 0.1)).all()
