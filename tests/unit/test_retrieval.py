"""Whole-catalog retrieval used by evaluation and candidate generation."""

import numpy as np
import pandas as pd
import pytest

from mmpipeline.retrieval.features import PairFeaturizer
from mmpipeline.retrieval import BM25Index, DenseIndex, product_text, query_id_for, tokenize
from mmpipeline.retrieval.candidates import CandidateGenerator
from mmpipeline.retrieval.dense import Vectors
from mmpipeline.retrieval.embeddings import ModelNotFound, model_stats, pick_model


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


# ------------------------------------------------------------------ one BM25 text, one model picker, keys

def _catalog(n: int = 30, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"p{i}" for i in range(n)]
    products = pd.DataFrame({
        "product_id": ids, "title": [f"{'red' if i % 2 else 'blue'} shirt {i}" for i in range(n)],
        "brand": ["acme" if i == 3 else None for i in range(n)],
        "category_path": ["Apparel > Topwear" if i < 10 else "Footwear > Shoes" for i in range(n)],
        "description": ["waterproof lining" if i == 7 else None for i in range(n)],
    })
    text = rng.normal(size=(n, dim)).astype(np.float32)
    image_ids = ids[::2]
    image = rng.normal(size=(len(image_ids), dim)).astype(np.float32)
    return products, ids, text, image_ids, image


def test_featurizer_bm25_indexes_the_same_text_as_candidate_generation():
    """The ranker's bm25 feature and the candidate generator search ONE text (title + brand +
    category + description); before, the featurizer indexed titles only."""
    products, ids, text, image_ids, image = _catalog()
    fz = PairFeaturizer(products, {"text": (ids, text), "image": (image_ids, image)})
    s = fz.bm25_scores("acme")
    assert s[3] > 0 and (np.delete(s, 3) == 0).all()  # brand only
    assert fz.bm25_scores("waterproof")[7] > 0  # description only
    assert (fz.bm25_scores("footwear")[10:] > 0).all()  # category only
    # the score stage's generator (product_text) and the featurizer's give the same BM25 scores
    gen = CandidateGenerator(np.array(ids, dtype=object), product_text(products), Vectors.empty(), Vectors.empty(),
                             k=5, sources=["bm25"])
    for q in ("acme", "red shirt footwear", "waterproof blue"):
        np.testing.assert_allclose(gen.bm25.scores_all(q), fz.bm25_scores(q), rtol=1e-6)


def test_evaluation_and_scoring_draw_the_same_candidates():
    """rank.evaluate's candidate set (CandidateGenerator.from_featurizer) equals the score stage's."""
    products, ids, text, image_ids, image = _catalog()
    rng = np.random.default_rng(1)
    qids = ["q1", "q2", "q3"]
    qmat = rng.normal(size=(3, 8)).astype(np.float32)
    fz = PairFeaturizer(products, {"text": (ids, text), "image": (image_ids, image)}, (qids, qmat))
    serve = CandidateGenerator(np.array(ids, dtype=object), product_text(products), Vectors(ids, text, "t"),
                               Vectors(image_ids, image, "i"), k=4)
    queries = ["acme shirt", "footwear", "nothing matches"]
    published = serve.generate(pd.DataFrame({"query_id": qids, "query": queries}), Vectors(qids, qmat), progress=False)
    evaluated = CandidateGenerator.from_featurizer(fz, 4)
    qvec, has = fz.query_matrix(queries, qids)
    lists = evaluated.candidate_lists(qids, queries, qvec, has)
    for qid, got in zip(qids, lists):
        want = sorted(published.loc[published["query_id"] == qid, "product_id"])
        assert list(got) == want and len(want) >= 4
    assert "p3" in lists[0]  # reached through the brand


def test_rank_catalog_reranks_the_generator_candidates():
    """The models in evaluation score exactly the generator's candidates (plus judged items at the floor)."""
    from mmpipeline.config import RankConfig
    from mmpipeline.rank.evaluation import Relevance, rank_catalog
    from mmpipeline.rank.metrics import FLOOR

    products, ids, text, image_ids, image = _catalog()
    qids = ["q1", "q2"]
    qmat = np.random.default_rng(2).normal(size=(2, 8)).astype(np.float32)
    fz = PairFeaturizer(products, {"text": (ids, text), "image": (image_ids, image)}, (qids, qmat))
    rel = Relevance(qids, ["acme", "footwear shoes"], [np.array([0, 3]), np.array([12])], [np.array([1.0, 0.0]), np.array([1.0])])
    gen = CandidateGenerator.from_featurizer(fz, 3, sources=["bm25", "text"])
    r, info = rank_catalog(fz, rel, {"m": lambda a: a["scalars"][:, 0]}, RankConfig(), progress=False, candidates=gen)
    lists = gen.candidate_lists(qids, rel.queries, *fz.query_matrix(rel.queries, qids))
    for qi in range(2):
        scored = r.items["m"][qi][r.scores["m"][qi] > FLOOR]
        assert sorted(fz.ids[scored]) == list(lists[qi])
    assert info["mean_candidates"] == np.mean([len(x) for x in lists])


def test_pick_model_one_rule():
    t = pd.Timestamp("2026-11-01", tz="UTC")
    df = pd.DataFrame({"model_name": ["b", "b", "a", "a", "c"],
                       "embedded_at": [t, t, t, t + pd.Timedelta(days=1), t + pd.Timedelta(days=9)]})
    stats = model_stats(df)
    assert pick_model(stats, None) == "a"  # a and b have 2 vectors each; a was embedded later; c has 1
    assert pick_model(stats.assign(last=t), None) == "a"  # full tie: by name
    assert pick_model(stats, "c") == "c"
    with pytest.raises(ModelNotFound, match="'zzz'"):
        pick_model(stats, "zzz")
    assert pick_model(model_stats(df.iloc[:0]), None) is None
    # the featurizer goes through the same rule (it used value_counts order before)
    from mmpipeline.retrieval.features import _pick_model

    emb = df.assign(modality="text")
    assert _pick_model(emb, "text", None) == "a" and _pick_model(emb, "image", None) is None


def test_query_keys_match_the_clean_stage(spark):
    """query_id_for(normalize_query(q)) is the id clean writes (Spark), for awkward inputs too."""
    from mmpipeline.clean.transforms import normalize_query_col, query_id_col
    from mmpipeline.retrieval.keys import normalize_query

    raw = ["Cordless  DRILL", "  men's Navy-Blue shirts ", "1/2 in. x 10 ft. pvc", "Café crème", "ß straße"]
    df = spark.createDataFrame([(r,) for r in raw], "q string")
    rows = df.select("q", normalize_query_col("q").alias("n")).select("q", "n", query_id_col("n").alias("id")).collect()
    for r in rows:
        assert normalize_query(r["q"]) == r["n"]
        assert query_id_for(normalize_query(r["q"])) == r["id"]


def test_bm25_saved_index_reloads_memory_mapped_to_the_same_results(tmp_path):
    products, ids, *_ = _catalog()
    idx = BM25Index(ids, product_text(products).tolist())
    idx.save(tmp_path / "bm25")
    back = BM25Index.load(tmp_path / "bm25", mmap=True)
    for q in (["acme"], ["red shirt", "footwear shoes", "waterproof"]):
        a, b = idx.search(q, 7), back.search(q, 7)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1])
    np.testing.assert_allclose(back.score_pairs(["acme"] * 2, ["p3", "p4"]), idx.score_pairs(["acme"] * 2, ["p3", "p4"]))


def _imports(folder: str) -> dict[str, set[str]]:
    """module file -> the mmpipeline modules it imports (anywhere in the file, lazy imports too)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "mmpipeline" / folder
    out = {}
    for f in sorted(root.glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[f.name] = {n for n in names if n.startswith("mmpipeline")}
    return out


def test_import_direction_rank_and_score_use_retrieval_never_the_reverse():
    for name, mods in _imports("retrieval").items():
        assert not {m for m in mods if m.startswith(("mmpipeline.rank", "mmpipeline.score"))}, name
    for name, mods in _imports("score").items():
        assert not {m for m in mods if m.startswith(("mmpipeline.clean", "mmpipeline.embed"))}, name
    # the encoder and the query normaliser are reached through retrieval only
    assert any(m.startswith("mmpipeline.embed") for m in _imports("retrieval")["encoder.py"])


def test_featuriser_score_row_caches_are_bounded_by_bytes_and_keep_values(monkeypatch):
    """Whole-catalog BM25 rows are cached per query up to ROW_CACHE_BYTES (oldest dropped first):
    a count bound held gigabytes per process on a large catalog. A modality the catalog lacks
    costs no n x dim matrix."""
    import numpy as np
    import pandas as pd

    from mmpipeline.retrieval import features as fe

    n = 64
    p = pd.DataFrame({"product_id": [f"p{i}" for i in range(n)],
                      "title": [f"drill {i} cordless" if i % 2 else f"white paint {i}" for i in range(n)],
                      "description": [f"model {i} for walls" for i in range(n)]})
    vec = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    monkeypatch.setattr(fe, "ROW_CACHE_BYTES", 4 * n * 10)  # room for 10 BM25 rows, 5 title+fields pairs
    fz = fe.PairFeaturizer(p, {"text": (p["product_id"].tolist(), vec)})
    assert fz.p_image.shape == (n, 8) and fz.p_image.strides[0] == 0 and not fz.p_image.any()
    queries = [f"drill {i}" for i in range(30)]
    first = {q: fz.bm25_scores(q).copy() for q in queries}
    fields = {q: tuple(a.copy() for a in fz.field_scores(q)) for q in queries}
    assert len(fz._bm25_cache) == 10 and list(fz._bm25_cache) == queries[-10:]
    assert len(fz._field_cache) == 5 and list(fz._field_cache) == queries[-5:]
    for q in queries:  # recomputed after eviction: the same rows
        assert np.array_equal(fz.bm25_scores(q), first[q])
        assert all(np.array_equal(a, b) for a, b in zip(fz.field_scores(q), fields[q]))


def test_token_rows_count_and_match_like_python_sets():
    """The featuriser keeps each product's distinct tokens as ids (CSR), not a Python set per product
    (several GB per process at 1M products): counts and fuzzy-hit lookups equal the set arithmetic."""
    import numpy as np

    from mmpipeline.retrieval.features import TokenRows

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(40)]
    docs = [list(rng.choice(words, int(rng.integers(0, 9)))) for _ in range(300)]  # repeats and empty rows
    vocab: dict[str, int] = {}
    tr = TokenRows.build(docs, vocab)
    assert len(tr) == 300 and list(tr.lengths()) == [len(set(d)) for d in docs]
    rows = rng.integers(0, 300, 500)
    q = {"w1", "w7", "w30", "absent"}
    qids = np.unique([vocab[w] for w in q if w in vocab])
    assert tr.counts(rows, qids).tolist() == [float(len(q & set(docs[r]))) for r in rows]
    assert tr.counts(rows, np.zeros(0, np.int64)).tolist() == [0.0] * len(rows)
    hits = rng.random((3, len(vocab))) < 0.1  # 3 query words x vocabulary
    want = [[any(hits[t, vocab[w]] for w in set(docs[r])) for t in range(3)] for r in rows]
    assert tr.any_hits(rows, hits).tolist() == want


def test_featurizer_reads_a_shared_bm25_index_in_another_product_order():
    """Score workers hand the featuriser the candidate generator's memory-mapped BM25 index (sorted
    by product id) instead of building a second one: the features are the same as with its own."""
    import numpy as np
    import pandas as pd

    from mmpipeline.retrieval.bm25 import BM25Index
    from mmpipeline.retrieval.features import PairFeaturizer
    from mmpipeline.retrieval.text import product_text

    n = 50
    p = pd.DataFrame({"product_id": [f"p{(i * 7) % n:02d}" for i in range(n)],  # not in id order
                      "title": [f"drill {i} cordless" if i % 3 else f"white paint {i}" for i in range(n)],
                      "brand": ["Ryobi" if i % 2 else "Behr" for i in range(n)]})
    vec = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    srt = p.sort_values("product_id").reset_index(drop=True)
    shared = BM25Index(srt["product_id"].tolist(), product_text(srt).tolist())
    own = PairFeaturizer(p, {"text": (p["product_id"].tolist(), vec)})
    given = PairFeaturizer(p, {"text": (p["product_id"].tolist(), vec)}, bm25=shared)
    assert given.bm25 is shared
    pairs = (["drill 4", "white paint", "ryobi drill"] * 20, ["q1", "q2", "q3"] * 20,
             list(np.random.default_rng(1).choice(p["product_id"], 60)))
    a, b = own.arrays(*pairs), given.arrays(*pairs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["scalars"][:, 2].any()  # the bm25 column is not all zero


def test_fuzzy_title_matches_are_the_same_batched_cached_or_one_query_at_a_time():
    """Query words' fuzzy title matches are computed in one batched scan per call and cached per word:
    the match features do not depend on what was featurised before."""
    import numpy as np
    import pandas as pd

    from mmpipeline.retrieval.features import MATCH_FEATURES, PairFeaturizer

    titles = ["ceiling mounted light fixtures", "pendant lighting fixture", "cordless drill kit", "white ceiling paint",
              "led ceilling fan", "drill bits 3/4 in."]
    p = pd.DataFrame({"product_id": [f"p{i}" for i in range(len(titles))], "title": titles})
    vec = np.random.default_rng(0).standard_normal((len(titles), 8)).astype(np.float32)
    queries = ["ceiling mounted lighting fixures", "cordles drills", "3/4 in drill", "ceiling fan", "paint"]
    qs = [q for q in queries for _ in titles]
    pids = list(p["product_id"]) * len(queries)
    rows = np.arange(len(titles)).tolist() * len(queries)
    batched = PairFeaturizer(p, {"text": (p["product_id"].tolist(), vec)}).match_scalars(qs, np.array(rows))
    one = PairFeaturizer(p, {"text": (p["product_id"].tolist(), vec)})
    singles = [one.match_scalars([q], np.array([r])) for q, r in zip(reversed(qs), reversed(rows))][::-1]
    for c in MATCH_FEATURES:
        assert batched[c].tolist() == [s[c][0] for s in singles], c
    # 'fixures' ~ 'fixtures' (not 'lighting' ~ 'light': ratio 0.77); 'cordles drills' ~ the drill kit
    assert batched["title_fuzzy_coverage"][0] == 0.75 and batched["title_matches"][0] == 2.0
    assert batched["title_fuzzy_coverage"][len(titles) + 2] == 1.0 and batched["title_matches"][len(titles) + 2] == 0
    assert len(pids) == len(qs)


def test_worker_state_holds_one_stage_state_per_process():
    """Spark reuses Python workers across stages: a stage's worker state (featuriser, indexes, model)
    replaces the previous stage's instead of sitting next to it (5 GB per worker at 1M products)."""
    import gc
    import weakref

    from mmpipeline.retrieval import worker_state as ws

    class State:
        pass

    loads: list[str] = []

    def load(name):
        loads.append(name)
        return State()

    a = ws.get_or_load("training-data:1", lambda: load("a"))
    ref = weakref.ref(a)
    assert ws.get_or_load("training-data:1", lambda: load("again")) is a and loads == ["a"]
    del a
    b = ws.get_or_load("score:1", lambda: load("b"))
    gc.collect()
    assert ref() is None and ws.held() == ["score:1"] and loads == ["a", "b"]
    assert ws.get_or_load("score:1", lambda: load("x")) is b
