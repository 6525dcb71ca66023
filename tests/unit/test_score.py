"""Pure transforms of the score stage: query set, candidates + recall, ranking, fused vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmpipeline.retrieval.candidates import CandidateGenerator, candidate_recall
from mmpipeline.retrieval.dense import Vectors
from mmpipeline.retrieval.text import product_text
from mmpipeline.score.queries import build_query_set, normalize_query, query_id_for, read_query_list
from mmpipeline.score.scoring import rank_top
from mmpipeline.score.vectors import fuse_product_vectors


def test_query_set_head_by_frequency_plus_list(tmp_path):
    queries = pd.DataFrame({"query_id": ["a", "b", "c"], "query_norm": ["red shirt", "blue bag", "hat"],
                            "frequency": [5, 1, 1]})
    judgments = pd.DataFrame({"query_id": ["b"] * 3 + ["d"], "query_norm": ["blue bag"] * 3 + ["shoe"],
                              "product_id": ["1", "2", "3", "4"], "grade": [1.0, 2.0, 3.0, 1.0]})
    inter = pd.DataFrame({"query_id": ["c"] * 4 + ["a"], "query_norm": ["hat"] * 4 + ["red shirt"],
                          "session_id": ["s1", "s2", "s3", "s3", "s9"]})
    lst = tmp_path / "queries.txt"
    lst.write_text("# head queries the business cares about\nRed  Shirt\n\nGreen Scarf\n")
    explicit = read_query_list(lst)
    qs = build_query_set(2, queries, judgments, inter, explicit)
    # a: 5 logged + 1 session = 6; c: max(1, 0) + 3 sessions = 4; b: max(1, 3) = 3; d: 1
    assert list(qs["query_id"][:2]) == ["a", "c"]
    assert list(qs["frequency"][:2]) == [6, 4]
    red, scarf = query_id_for(normalize_query("Red  Shirt")), query_id_for(normalize_query("Green Scarf"))
    assert list(qs["query_id"]) == ["a", "c", red, scarf]  # ids in the test data are not real hashes
    assert list(qs["source"]) == ["head", "head", "list", "list"]
    assert list(qs["query"][2:]) == ["red shirt", "green scarf"]
    # a list query that is also a head query is kept once
    qs2 = build_query_set(5, queries.assign(query_id=[red, "b", "c"]), None, None, ["RED SHIRT"])
    assert (qs2["query_id"] == red).sum() == 1 and qs2.loc[qs2["query_id"] == red, "source"].item() == "head+list"
    assert build_query_set(0, None, None, None, None).empty
    with pytest.raises(FileNotFoundError):
        read_query_list(tmp_path / "missing.txt")


def _catalog():
    rng = np.random.default_rng(0)
    ids = np.array([f"p{i}" for i in range(40)], dtype=object)
    titles = pd.Series([("red" if i % 2 else "blue") + (" shirt" if i % 4 < 2 else " shoe") + f" {i}" for i in range(40)])
    centre = {"red shirt": rng.normal(size=6), "blue shirt": rng.normal(size=6), "red shoe": rng.normal(size=6),
              "blue shoe": rng.normal(size=6)}
    tv = np.stack([centre[" ".join(t.split()[:2])] + 0.05 * rng.normal(size=6) for t in titles])
    return ids, titles, tv, centre


def test_candidates_union_sources_and_recall():
    ids, titles, tv, centre = _catalog()
    text = Vectors(ids, tv, "t")
    image = Vectors(ids[::2], tv[::2] + 0.01, "i")  # half of the products have photos
    gen = CandidateGenerator(ids, titles, text, image, k=5, query_batch_size=1)
    qset = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "query": ["red shirt", "blue shoe", "zzz unknown"]})
    qvec = Vectors(np.array(["q1", "q2"], dtype=object), np.stack([centre["red shirt"], centre["blue shoe"]]))
    c = gen.generate(qset, qvec, progress=False)
    assert not c.duplicated(["query_id", "product_id"]).any()
    # q3 has no vector and no BM25 match: no candidates (the publish check catches the coverage gap)
    assert set(c["query_id"]) == {"q1", "q2"}
    srcs = set("+".join(c["candidate_source"]).split("+"))
    assert srcs == {"text", "image", "bm25"}
    q1 = c[c["query_id"] == "q1"]
    text_hits = q1[q1["candidate_source"].str.contains("text")]
    assert len(text_hits) == 5 and all(titles[int(p[1:])].startswith("red shirt") for p in text_hits["product_id"])
    judg = pd.DataFrame({"query_id": ["q1"] * 3 + ["q2"] * 2, "product_id": ["p1", "p5", "p0", "p2", "not-a-candidate"],
                         "grade": [3.0, 3.0, 1.0, 2.0, 3.0]})
    rec = candidate_recall(c, judg, 5)
    relevant = {"q1": {"p1", "p5"}, "q2": {"p2", "not-a-candidate"}}  # grade above the lowest (1.0)

    def expected(source=None):
        per = []
        for q, rel in relevant.items():
            cq = c[c["query_id"] == q]
            if source:
                cq = cq[cq["candidate_source"].str.split("+").apply(lambda s: source in s)]
            per.append(len(rel & set(cq["product_id"])) / len(rel))
        return round(float(np.mean(per)), 4)

    assert rec["queries_judged"] == 2 and rec["relevant_pairs"] == 4
    assert rec["recall_at_k_union"] == expected() < 1.0  # a judged product no source retrieved
    for m in ("text", "image", "bm25"):
        assert rec[f"recall_at_k_{m}"] == expected(m), m
    assert candidate_recall(c, None, 5)["queries_judged"] == 0


def test_candidates_skip_dense_when_dims_differ():
    ids, titles, tv, centre = _catalog()
    gen = CandidateGenerator(ids, titles, Vectors(ids, tv), Vectors(ids, np.ones((40, 3))), k=3,
                             sources=["text", "image"])
    c = gen.generate(pd.DataFrame({"query_id": ["q"], "query": ["red shirt"]}),
                     Vectors(np.array(["q"], dtype=object), centre["red shirt"][None]), progress=False)
    assert set(c["candidate_source"]) == {"text"} and len(c) == 3


def test_product_text_joins_fields():
    p = pd.DataFrame({"product_id": ["1"], "title": ["Shirt"], "brand": [None], "category_path": ["Apparel > Top"]})
    assert product_text(p).tolist() == ["Shirt  Apparel > Top"]


def test_rank_top_dense_ranks_ties_and_non_finite_last():
    s = pd.DataFrame({"query_id": ["a"] * 5 + ["b"] * 2, "query": "q", "candidate_source": "bm25",
                      "product_id": ["p3", "p1", "p2", "p4", "p5", "x", "y"],
                      "score": [0.5, 0.9, 0.5, np.nan, np.inf, 1.0, 2.0]})
    r = rank_top(s, 4)
    a = r[r["query_id"] == "a"]
    assert list(a["product_id"]) == ["p1", "p2", "p3", "p5"]  # tie broken by id; NaN/inf last
    assert list(a["rank"]) == [1, 2, 3, 4]
    assert list(r[r["query_id"] == "b"]["product_id"]) == ["y", "x"]


def test_fused_vectors_weighted_sum_and_missing_modalities():
    t = Vectors(np.array(["a", "b"], dtype=object), np.array([[1.0, 0, 0], [0, 2.0, 0]]), "txt")
    i = Vectors(np.array(["a", "c"], dtype=object), np.array([[0, 0, 3.0], [0, 1.0, 1.0]]), "img")
    v = fuse_product_vectors(np.array(["a", "b", "c", "d"], dtype=object), t, i, {"text": 0.5, "image": 0.5})
    assert list(v["product_id"]) == ["a", "b", "c"]  # d has no vector at all
    assert list(v["modalities"]) == ["text+image", "text", "image"]
    np.testing.assert_allclose(v["vector"][0], np.array([1, 0, 1]) / np.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(v["vector"][1], [0, 1, 0], atol=1e-6)
    assert v["fusion"][0] == "wsum(text=0.5,image=0.5)" and v["dim"][0] == 3
    # image vectors outside the text space: concatenation
    i2 = Vectors(np.array(["a"], dtype=object), np.array([[1.0, 1.0]]), "img2")
    v2 = fuse_product_vectors(np.array(["a"], dtype=object), t, i2, {"text": 1, "image": 1})
    assert v2["dim"][0] == 5 and v2["fusion"][0].startswith("concat")
    with pytest.raises(ValueError):
        fuse_product_vectors(np.array(["a"], dtype=object), t, i, {"text": 0, "image": 0})


def test_catalog_without_images():
    ids, titles, tv, centre = _catalog()
    gen = CandidateGenerator(ids, titles, Vectors(ids, tv, "t"), Vectors.empty(), k=4)
    c = gen.generate(pd.DataFrame({"query_id": ["q"], "query": ["red shirt"]}),
                     Vectors(np.array(["q"], dtype=object), centre["red shirt"][None]), progress=False)
    assert "image" not in "+".join(c["candidate_source"]) and len(c) >= 4
    v = fuse_product_vectors(ids, Vectors(ids, tv, "t"), Vectors.empty(), {"text": 0.5, "image": 0.5})
    assert len(v) == 40 and set(v["modalities"]) == {"text"} and v["dim"][0] == 6


def _vectors(ids, mat, run_date=None):
    t = Vectors(np.asarray(ids, dtype=object), np.asarray(mat, np.float32), "txt")
    v = fuse_product_vectors(np.asarray(ids, dtype=object), t, Vectors.empty(), {"text": 1.0, "image": 0.0})
    return v if run_date is None else v.assign(run_date=run_date)


def test_product_vectors_merged_by_content_hash(tmp_path):
    """A re-run writes no version; a changed product updates only its row; a vanished one is deleted in
    the same commit; an old per-run-date table is rewritten once as one row per product."""
    import datetime as dt

    from deltalake import DeltaTable, write_deltalake

    from mmpipeline.lake import Lake
    from mmpipeline.score.job import VECTORS, merge_product_vectors

    d1, d2, d3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)
    lake = Lake(tmp_path / "lake", engine="delta-rs")
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(6)]
    mat = rng.normal(size=(6, 4))
    s1 = merge_product_vectors(lake, _vectors(ids, mat), d1)
    assert s1["inserted"] == 6 and s1["committed"]
    t1 = lake.read_pandas(VECTORS).sort_values("product_id").reset_index(drop=True)
    assert len(t1) == 6 and t1["content_hash"].notna().all()
    assert set(pd.to_datetime(t1["run_date"]).dt.date) == {d1}

    v = lake.version(VECTORS)
    for d in (d1, d2):  # same vectors (a re-run, or the next night with no change): no new version
        s = merge_product_vectors(lake, _vectors(ids, mat), d)
        assert not s["committed"] and s["unchanged"] == 6 and lake.version(VECTORS) == v

    mat2 = mat.copy()
    mat2[2] += 1.0  # p2 changes, p5 vanishes, p9 is new
    ids3, mat3 = ids[:5] + ["p9"], np.vstack([mat2[:5], rng.normal(size=(1, 4))])
    s3 = merge_product_vectors(lake, _vectors(ids3, mat3), d3)
    assert (s3["inserted"], s3["updated"], s3["deleted"], s3["unchanged"]) == (1, 1, 1, 4)
    assert lake.version(VECTORS) == v + 1  # one commit
    t3 = lake.read_pandas(VECTORS).sort_values("product_id").reset_index(drop=True)
    assert list(t3["product_id"]) == ["p0", "p1", "p2", "p3", "p4", "p9"]
    same = ["p0", "p1", "p3", "p4"]
    a, b = t1.set_index("product_id").loc[same], t3.set_index("product_id").loc[same]
    pd.testing.assert_frame_equal(a.drop(columns="vector"), b.drop(columns="vector"))
    assert all(np.array_equal(x, y) for x, y in zip(a["vector"], b["vector"]))
    row = t3.set_index("product_id").loc["p2"]
    assert pd.Timestamp(row["run_date"]).date() == d3 and row["content_hash"] != t1.set_index("product_id").loc["p2", "content_hash"]
    np.testing.assert_allclose(row["vector"], mat2[2] / np.linalg.norm(mat2[2]), atol=1e-6)

    # the old layout (one full copy per run-date partition) is migrated once
    old = tmp_path / "old" / "gold" / "product_vectors"
    old.mkdir(parents=True)
    o = _vectors(ids, mat, d1).drop(columns=[])
    write_deltalake(str(old), pa_table(o), partition_by=["run_date"])
    write_deltalake(str(old), pa_table(_vectors(ids, mat, d2)), mode="append", partition_by=["run_date"])
    lake2 = Lake(tmp_path / "old", engine="delta-rs")
    s = merge_product_vectors(lake2, _vectors(ids, mat), d3)
    assert s["committed"] and DeltaTable(str(old)).metadata().partition_columns == []
    assert len(lake2.read_pandas(VECTORS)) == 6
    assert not merge_product_vectors(lake2, _vectors(ids, mat), d3)["committed"]


def pa_table(df):
    import pyarrow as pa

    df = df.copy()
    df["vector"] = [np.asarray(x, np.float32).tolist() for x in df["vector"]]
    return pa.Table.from_pandas(df, preserve_index=False)


def test_score_inputs_keep_the_image_hash_for_the_duplicate_key(tmp_path, make_config):
    """score.collapse_key title_image: two listings with the same title but different photos are not
    duplicates; the stage's inputs must carry silver's image_hash (they used to drop it, so every
    same-title pair collapsed)."""
    import datetime as dt

    from mmpipeline.lake import Lake
    from mmpipeline.schemas import table
    from mmpipeline.score.dedupe import duplicate_groups
    from mmpipeline.score.job import load_inputs

    cfg = make_config()
    lake = Lake(cfg.lake.root, engine="delta-rs")
    p = pd.DataFrame({"product_id": ["a", "b", "c", "d"], "title": ["Red Shirt", "red shirt", "Red shirt", "hat"],
                      "image_hash": ["h1", "h1", "h2", None], "run_date": dt.date(2026, 1, 1)})
    for c, _ in table("silver.products").columns:
        if c not in p.columns:
            p[c] = None
    lake.write("silver.products", p, mode="overwrite")
    inputs = load_inputs(lake, cfg)
    assert "attributes" not in inputs.products.columns  # only what retrieval and the duplicate key use
    groups = duplicate_groups(inputs.products, "title_image")
    assert sorted(groups["product_id"]) == ["a", "b"]
