"""Training-data builder (split by query, labels, negatives), featurizer and the gating decision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmpipeline.config import RankConfig
from mmpipeline.rank import data
from mmpipeline.rank.gate import decide
from mmpipeline.retrieval.features import FEATURE_COLUMNS, PairFeaturizer

DIM = 6


def _featurizer(n: int = 40, seed: int = 0) -> PairFeaturizer:
    rng = np.random.default_rng(seed)
    ids = [f"p{i}" for i in range(n)]
    products = pd.DataFrame({"product_id": ids, "title": [f"{'red' if i % 2 else 'blue'} shirt {i}" for i in range(n)],
                             "price": [float(i) if i % 5 else None for i in range(n)]})
    text = rng.normal(size=(n, DIM))
    image_ids = ids[: n // 2]
    image = rng.normal(size=(len(image_ids), DIM))
    qids = [f"q{i}" for i in range(30)]
    return PairFeaturizer(products, {"text": (ids, text), "image": (image_ids, image)}, (qids, rng.normal(size=(30, DIM))))


def _judgments(n_q: int = 30) -> pd.DataFrame:
    rows = []
    for q in range(n_q):
        for j in range(4):
            rows.append({"query_id": f"q{q}", "query_norm": f"red shirt {q}", "product_id": f"p{(q + j) % 40}",
                         "grade": float(1 + (j % 3))})
    return pd.DataFrame(rows)


def test_split_is_by_query_deterministic_and_disjoint():
    rc = RankConfig(negatives_random=3, negatives_hard=3, hard_pool_k=8)
    fz = _featurizer()
    df, counts = data.build(_judgments(), None, fz, rc, "2026-11-01")
    assert df.groupby("query_id")["split"].nunique().max() == 1
    assert set(df["split"]) <= {"train", "valid", "test"}
    df2, _ = data.build(_judgments(), None, fz, rc, "2026-11-01")
    pd.testing.assert_frame_equal(df, df2)
    # stable: a query keeps its split when other queries come and go
    s_all = data.assign_split(pd.Series([f"q{i}" for i in range(200)]), rc.split)
    s_some = data.assign_split(pd.Series([f"q{i}" for i in range(0, 200, 3)]), rc.split)
    assert (s_all.iloc[::3].to_numpy() == s_some.to_numpy()).all()
    shares = s_all.value_counts(normalize=True)
    assert 0.5 < shares["train"] < 0.9
    assert counts["train_queries"] + counts["valid_queries"] + counts["test_queries"] == counts["queries"]


def test_labels_negatives_and_features():
    rc = RankConfig(negatives_random=3, negatives_hard=2, hard_pool_k=8)
    fz = _featurizer()
    j = _judgments()
    df, counts = data.build(j, None, fz, rc, "2026-11-01")
    judged = df[df["source"] == "judgment"]
    assert judged["label"].between(0, 1).all() and judged["label"].max() == 1 and judged["label"].min() == 0
    neg = df[df["source"].str.endswith("negative")]
    assert (neg["label"] == 0).all() and neg["grade"].isna().all()
    pairs = set(zip(j["query_id"], j["product_id"]))
    assert not any((q, p) in pairs for q, p in zip(neg["query_id"], neg["product_id"]))  # never a judged product
    assert counts["hard_negatives"] > 0 and counts["random_negatives"] == 3 * 30
    assert not df.duplicated(["query_id", "product_id"]).any()
    no_img = df[~df["product_id"].isin([f"p{i}" for i in range(20)])]
    assert (no_img["has_image"] == 0).all() and (no_img["cos_image"] == 0).all()


def test_interactions_graded_by_event_type_and_judgments_win():
    rc = RankConfig()
    inter = pd.DataFrame({
        "query_id": ["qa", "qa", "qa", "qa", "qb"], "query_norm": ["a"] * 4 + ["b"],
        "product_id": ["p1", "p1", "p2", "p3", "p1"],
        "event_type": ["impression", "purchase", "click", "teleport", "add_to_cart"]})
    g = data.grade_interactions(inter, rc.interaction_grades).set_index(["query_id", "product_id"])["grade"]
    assert g[("qa", "p1")] == 3 and g[("qa", "p2")] == 1 and g[("qb", "p1")] == 2 and ("qa", "p3") not in g
    judg = pd.DataFrame({"query_id": ["qa"], "query_norm": ["a"], "product_id": ["p2"], "grade": [1.0]})
    pairs = data.graded_pairs(judg, inter, rc).set_index(["query_id", "product_id"])
    assert pairs.loc[("qa", "p2"), "source"] == "judgment"
    assert pairs.loc[("qa", "p1"), "label"] == 1.0 and pairs.loc[("qb", "p1"), "label"] == pytest.approx(2 / 3)


def test_featurizer_transform_columns_and_unknowns():
    fz = _featurizer()
    out = fz.transform(["red shirt", "red shirt", "blue"], ["q1", "unknown-q", "q2"], ["p1", "p30", "nope"])
    assert list(out.columns) == FEATURE_COLUMNS and len(out) == 3
    assert out.loc[0, "has_image"] == 1 and out.loc[1, "has_image"] == 0  # p30 has no image
    assert out.loc[1, "has_query_vec"] == 0 and out.loc[1, "cos_text"] == 0  # no vector, no encoder
    assert out.loc[2, "has_text"] == 0 and out.loc[2, "bm25"] == 0  # unknown product
    assert out.loc[0, "title_coverage"] == 1.0 and out.loc[0, "bm25"] > 0
    assert len(out.loc[0, "q_text"]) == DIM


def test_gate_decisions():
    rc = RankConfig(primary_metric="ndcg_at_10", promote_margin=0.01, slice_tolerance=0.02)

    def m(all_, short=None, noimg=None):
        return {"all": {"ndcg_at_10": all_}, "short_queries": {"ndcg_at_10": short if short is not None else all_},
                "long_queries": {"ndcg_at_10": all_}, "no_image_products": {"ndcg_at_10": noimg if noimg is not None else all_}}

    ok, why = decide(m(0.3), None, rc)
    assert ok and "no current champion" in why[0]
    ok, _ = decide(m(0.50), m(0.60), rc)  # worse: not promoted
    assert not ok
    ok, _ = decide(m(0.605), m(0.60), rc)  # better but inside the margin
    assert not ok
    ok, _ = decide(m(0.70), m(0.60), rc)
    assert ok
    ok, why = decide(m(0.70, noimg=0.50), m(0.60), rc)  # a slice regresses beyond tolerance
    assert not ok and any("no_image_products regresses" in r for r in why)
    ok, _ = decide(m(0.70, noimg=0.59), m(0.60), rc)  # within tolerance
    assert ok
    ok, _ = decide(m(float("nan")), m(0.6), rc)
    assert not ok


def test_training_data_bounded_memory_paths_equal_the_one_shot_ones():
    """Scalar features by query block = one shot, with at most one block of whole-catalog BM25 rows held;
    hard-negative neighbours from FAISS exact search = the numpy exact search they replace."""
    from mmpipeline.config import AnnConfig
    from mmpipeline.retrieval.ann import AnnIndex
    from mmpipeline.retrieval.dense import DenseIndex

    rc = RankConfig(negatives_random=3, negatives_hard=3, hard_pool_k=8)
    fz = _featurizer()
    df, _ = data.build(_judgments(), None, fz, rc, "2026-01-01")
    ref = fz.scalar_features(df["query_norm"].fillna("").tolist(), df["query_id"].tolist(), df["product_id"].tolist())
    fz2 = _featurizer()
    held: list[int] = []
    orig = fz2.bm25_scores

    def spy(q):
        held.append(len(fz2._bm25_cache))
        return orig(q)

    fz2.bm25_scores = spy
    got = data.scalar_features_by_query_block(fz2, df.sample(frac=1.0, random_state=1).sort_index(), block=4)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref)
    assert df["query_id"].nunique() > 4 and max(held) <= 4

    qv, _ = fz.query_matrix(["x"] * 30, [f"q{i}" for i in range(30)])
    exact, _ = DenseIndex(fz.ids, fz.p_text).search(qv, 8)
    faiss_ids, _ = AnnIndex.build(fz.ids, fz.p_text, AnnConfig(kind="exact")).search(qv, 8)
    assert (exact == faiss_ids).all()


@pytest.mark.parametrize("hard_index", ["exact", "ivf"])
def test_training_rows_of_any_query_partition_are_the_whole_tables_rows(hard_index):
    """The spark engine's contract: rows per query partition (as executors build them, with the hard-negative
    indexes built once and reused) concatenate to exactly the one-process table -- also with the
    approximate (IVF) neighbour index large catalogs use."""
    rc = RankConfig(negatives_random=3, negatives_hard=3, hard_pool_k=8, hard_index=hard_index)
    fz = _featurizer(800 if hard_index == "ivf" else 40)  # IVF needs 39 training vectors per list
    whole, counts = data.build(_judgments(), None, fz, rc, "2026-11-01")
    pairs, _ = data.judged_pairs(_judgments(), None, fz.pos, rc)
    idx = data.hard_indexes(fz, rc)
    assert idx[0].kind == hard_index  # text vectors (the image half stays exact below 624 vectors)
    qids = pairs["query_id"].unique()
    parts = [data.training_rows(pairs[pairs["query_id"].isin(qids[i::4])].reset_index(drop=True), fz, rc,
                                "2026-11-01", idx) for i in range(4)]
    got = pd.concat(parts, ignore_index=True).sort_values(data.ROW_ORDER, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, whole)
    assert counts["hard_negatives"] > 0 and counts["random_negatives"] > 0


def test_training_streams_the_delta_partition_into_the_same_lists(tmp_path):
    """train reads the night's rows as small record batches (TrainingRowBatches over the deltalake
    dataset) into per-split lists equal to make_lists of the whole frame in the builder's order; another
    night's partition is not read; the rows digest is the one of the whole frame."""
    import datetime as dt

    from mmpipeline.lake import Lake
    from mmpipeline.rank import train

    rc = RankConfig(negatives_random=3, negatives_hard=3, hard_pool_k=8)
    fz = _featurizer()
    d1, d2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
    lake = Lake(tmp_path / "lake", engine="delta-rs")
    df1, _ = data.build(_judgments(), None, fz, rc, d1)
    df2, _ = data.build(_judgments(12), None, fz, rc, d2)
    lake.write("gold.training_data", df1.sample(frac=1.0, random_state=3), mode="overwrite", partition={"run_date": d1})
    v = lake.write("gold.training_data", df2, mode="overwrite", partition={"run_date": d2})
    whole = lake.read_pandas("gold.training_data", filters=[("run_date", "=", d1)])
    whole = whole.sort_values(train.ROW_ORDER, kind="stable").reset_index(drop=True)
    got = train.stream_lists(train.TrainingRowBatches(lake.uri("gold.training_data"), v, d1, batch_rows=7), fz)
    assert got.rows == len(whole) == len(df1) and got.rows_digest == train.rows_digest(whole)
    for split in ("train", "valid"):
        ref = train.make_lists(whole[whole["split"] == split].reset_index(drop=True), fz)
        mine = got.lists[split]
        assert len(ref) > 0 and mine.query_ids == ref.query_ids
        for f in ("q_vec", "q_index", "p_row", "scalars", "labels", "grades"):
            np.testing.assert_array_equal(getattr(mine, f), getattr(ref, f), err_msg=f)
        assert [g.tolist() for g in mine.groups] == [g.tolist() for g in ref.groups]
        head = whole[whole["split"] == split].head(5)
        assert got.head[split]["product_id"].tolist() == head["product_id"].tolist()


def test_evaluation_baselines_scan_the_catalog_in_blocks_like_the_full_score_rows():
    """rank_catalog's baselines without (queries x catalog) matrices: the dense top lists from a
    block-wise running top-k and the per-query BM25 rows give the items and scores of the full rows."""
    from mmpipeline.config import RankConfig as RC
    from mmpipeline.rank import evaluation as ev
    from mmpipeline.rank.metrics import FLOOR

    rc = RC(negatives_random=3, negatives_hard=3, hard_pool_k=8, recall_k=7, eval_k=5, eval_batch_queries=4,
            split={"train": 0.2, "valid": 0.1, "test": 0.7})
    fz = _featurizer()
    df, _ = data.build(_judgments(), None, fz, rc, "2026-11-01")
    rel = ev.Relevance.from_training_data(df, fz)
    qv, hq = fz.query_matrix(rel.queries, rel.query_ids)
    hq[1] = 0.0  # a query without a vector: no dense list
    for mat, has in ((fz.p_text, fz.has_text > 0), (fz.p_image, fz.has_image > 0)):
        full = np.where(has[None, :] & (hq[:, None] > 0), qv @ mat.T, -np.inf)
        got = ev.dense_topk(qv, hq > 0, mat, has, 7, block=6)
        for b in range(len(qv)):
            assert got[b].tolist() == ev._topk(full[b], 7).tolist()
    r, _ = ev.rank_catalog(fz, rel, {}, rc, progress=False)
    assert len(rel.query_ids) > 4 and not fz._bm25_cache  # each batch's BM25 rows dropped
    depth = max(rc.recall_k, rc.eval_k)
    qv, hq = fz.query_matrix(rel.queries, rel.query_ids)
    for name in ev.applicable_baselines(fz):
        if name == "bm25":
            full = np.stack([fz.bm25_scores(q) for q in rel.queries]).astype(np.float64)
            full[full <= 0] = -np.inf
        else:
            mat, has = (fz.p_text, fz.has_text) if name == "text_cosine" else (fz.p_image, fz.has_image)
            full = np.where((has[None, :] > 0) & (hq[:, None] > 0), qv @ mat.T, -np.inf).astype(np.float64)
        for b in range(len(rel.query_ids)):
            items = np.unique(np.concatenate([ev._topk(full[b], depth), rel.rows[b]]))
            np.testing.assert_array_equal(r.items[name][b], items)
            np.testing.assert_allclose(r.scores[name][b], np.where(np.isfinite(full[b][items]), full[b][items], FLOOR),
                                       rtol=1e-5)

def test_bm25_top_is_the_head_of_the_full_sort_of_matching_products():
    """Lexical hard negatives come from the nonzero BM25 scores only (no top-k over every product):
    the same ids as sorting every matching product by score, ties by catalog row; none unmatched."""
    fz = _featurizer()
    for q in ["drill", "white paint", "zzz-not-a-word", fz.titles[0].as_py()]:
        s = fz.bm25_scores(q)
        rows = [i for i in sorted(range(len(s)), key=lambda i: (-s[i], i)) if s[i] > 0]
        for k in (1, 3, 8, 1000):
            assert fz.bm25_top(q, k).tolist() == [fz.ids[i] for i in rows[:k]], (q, k)
