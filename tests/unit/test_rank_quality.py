"""Ranking-quality work of issue 13: a modality the catalog lacks is absent (n/a), every text field
enters the features, the LambdaMART peer, per-slice wins / losses and the baseline slice gate.

In-memory catalogs (no lake): a title-only catalog without images and a catalog whose relevance
lives in a text field besides the title."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmpipeline.config import RankConfig
from mmpipeline.rank import data, train
from mmpipeline.rank.evaluation import Rankings, Relevance, evaluate, grade_scorer_for, per_query, versus
from mmpipeline.rank.fusion import FusionConfig, build_ranker
from mmpipeline.rank.gate import SLICES, decide
from mmpipeline.retrieval.features import FIELD_FEATURES, IMAGE_FEATURES, SCALAR_FEATURES, PairFeaturizer

DIM = 8
ARTICLES = ["shirt", "shoe", "bag", "belt"]
COLOURS = ["red", "blue", "green"]


def _world(n: int = 72, images: bool = True, seed: int = 0):
    """Queries '<colour> <article>'; titles name the article only, the colour lives in the
    ``attributes`` (and half the time in the description): only the text fields know it."""
    rng = np.random.default_rng(seed)
    basis = np.eye(DIM, dtype=np.float32)
    rows, text, image = [], [], []
    for i in range(n):
        a, c = ARTICLES[i % 4], COLOURS[(i // 4) % 3]
        rows.append({"product_id": f"p{i}", "title": f"{a} item{i}",
                     "description": f"a fine {c} {a}" if i % 2 else "a fine product",
                     "attributes": [("colour", c), ("article", a)], "price": float(5 + i % 7)})
        text.append(basis[ARTICLES.index(a)] + 0.2 * rng.normal(size=DIM))
        image.append(basis[ARTICLES.index(a)] + basis[4 + COLOURS.index(c)] + 0.2 * rng.normal(size=DIM))
    products = pd.DataFrame(rows)
    ids = products["product_id"].tolist()
    jrows, qids, qvecs = [], [], []
    for c in COLOURS:
        for a in ARTICLES:
            for v in range(3):
                qid = f"q-{c}-{a}-{v}"
                qids.append(qid)
                qvecs.append(basis[ARTICLES.index(a)] + basis[4 + COLOURS.index(c)] + 0.05 * rng.normal(size=DIM))
                for r in rows:
                    if r["title"].startswith(a):
                        colour = dict(r["attributes"])["colour"]
                        jrows.append({"query_id": qid, "query_norm": f"{c} {a}" + (" please" * v),
                                      "product_id": r["product_id"], "grade": 3.0 if colour == c else 1.0})
    pv = {"text": (ids, np.stack(text))}
    if images:
        pv["image"] = (ids, np.stack(image))
    return products, pv, (qids, np.stack(qvecs)), pd.DataFrame(jrows)


RC = RankConfig(epochs=1, hidden_dim=8, negatives_random=3, negatives_hard=2, hard_pool_k=8, candidates_k=20,
                recall_k=20, batch_queries=8, device="cpu", lambdamart_rounds=30,
                split={"train": 0.5, "valid": 0.25, "test": 0.25})


def test_a_catalog_without_images_has_no_image_columns_baseline_or_weight():
    products, pv, qv, judg = _world(images=False)
    fz = PairFeaturizer(products, pv, qv)
    active = fz.active_features()
    assert not set(IMAGE_FEATURES) & set(active)
    df, _ = data.build(judg, None, fz, RC, "2026-11-01")
    tr = train.make_lists(df[df["split"] == "train"].reset_index(drop=True), fz)
    va = train.make_lists(df[df["split"] == "valid"].reset_index(drop=True), fz)
    model, _ = train.fit(fz, tr, va, RC, fusion="weighted")
    # weighted fusion learns no image weight: the weights are over text and numeric only
    assert set(model.modality_weights()) == {"alpha_text", "gamma_numeric"}
    assert sum(model.modality_weights().values()) == pytest.approx(1.0)
    assert not any(k.startswith("branches.image") for k in model.state_dict())
    assert model.cfg.scalar_features == active
    # the image baseline is not applicable: absent from the metrics, not a row of zeros
    res = evaluate(fz, df, {"fusion_weighted": model}, RC, progress=False)
    assert "image_cosine" not in res["metrics"] and res["baselines"] == ["bm25", "text_cosine"]
    assert set(res["metrics"]) == {"bm25", "text_cosine", "fusion_weighted"}


@pytest.mark.parametrize("kind", ["concat", "weighted", "attention"])
def test_a_model_without_the_image_modality_ignores_image_columns(kind):
    torch.manual_seed(0)
    active = [c for c in SCALAR_FEATURES if c not in IMAGE_FEATURES]
    m = build_ranker(FusionConfig.for_features(DIM, active, fusion=kind, hidden_dim=6, dropout=0.0))
    n = 5
    q, pt, pi = (torch.nn.functional.normalize(torch.randn(n, DIM), dim=-1) for _ in range(3))
    sc = torch.rand(n, len(SCALAR_FEATURES))
    m.fit_scaler(sc.numpy())
    base = m(q, pt, pi, sc)
    sc2 = sc.clone()
    for c in IMAGE_FEATURES:  # whatever the image columns say
        sc2[:, SCALAR_FEATURES.index(c)] = torch.rand(n) * 10
    torch.testing.assert_close(m(q, pt, pi * 0 + 1, sc2), base)
    assert m.mean.shape == (len(active),)


def test_text_fields_enter_the_features_and_can_be_switched_off():
    products, pv, qv, _ = _world()
    fz = PairFeaturizer(products, pv, qv)
    assert set(FIELD_FEATURES) <= set(fz.active_features())
    # p0 is a red shirt, p4 a blue shirt, the colour only in their attributes (their descriptions say
    # 'a fine product'); the titles ('shirt itemN') cannot tell them apart
    f = fz.scalar_features(["red shirt", "red shirt"], ["x", "x"], ["p0", "p4"])
    assert f.loc[0, "bm25_fields"] > f.loc[1, "bm25_fields"] > 0
    assert f.loc[0, "fields_coverage"] == 1.0 and f.loc[1, "fields_coverage"] == 0.5
    assert f.loc[0, "bm25_title"] == pytest.approx(f.loc[1, "bm25_title"])
    # description only: p1's description names its colour ('a fine red shoe'), p0's does not
    fd = PairFeaturizer(products, pv, qv, text_fields=["description"])
    g = fd.scalar_features(["red shirt", "red shirt"], ["x", "x"], ["p0", "p1"])
    assert g["fields_coverage"].tolist() == [0.0, 0.5] and g.loc[0, "has_fields"] == 1.0
    # off: title-only features, the field columns absent from the model
    off = PairFeaturizer(products, pv, qv, text_fields=[])
    assert not set(FIELD_FEATURES) & set(off.active_features())
    assert (off.scalar_features(["red shirt"], ["x"], ["p0"])[["bm25_fields", "fields_coverage", "has_fields"]]
            .to_numpy() == 0).all()
    with pytest.raises(ValueError, match="unknown fields"):
        PairFeaturizer(products, pv, qv, text_fields=["colour"])


def test_stored_rows_without_the_field_columns_get_them_computed():
    products, pv, qv, judg = _world()
    fz = PairFeaturizer(products, pv, qv)
    df, _ = data.build(judg, None, fz, RC, "2026-11-01")
    old = df.drop(columns=FIELD_FEATURES)  # a gold.training_data written before the field features
    np.testing.assert_allclose(fz.stored_scalars(old), fz.stored_scalars(df), rtol=1e-6)


def test_lambdamart_peer_uses_the_rankers_features_and_learns_the_fields():
    from mmpipeline.rank.lambdamart import fit_lambdamart

    products, pv, qv, judg = _world(images=False)
    fz = PairFeaturizer(products, pv, qv)
    df, _ = data.build(judg, None, fz, RC, "2026-11-01")
    tr = train.make_lists(df[df["split"] == "train"].reset_index(drop=True), fz)
    va = train.make_lists(df[df["split"] == "valid"].reset_index(drop=True), fz)
    lm = fit_lambdamart(fz, tr, va, RC)
    assert lm.features == fz.active_features() and not lm.use_image
    res = evaluate(fz, df, {"lambdamart": lm}, RC, progress=False)
    # the colour is only in the text fields: the peer, which sees them, beats title-only BM25
    assert res["metrics"]["lambdamart"]["all"]["ndcg_at_10"] > res["metrics"]["bm25"]["all"]["ndcg_at_10"]
    r = res["rmse"]["lambdamart"]
    assert r["rmse"] < r["rmse_mean_baseline"]
    # the peer's grade is its own LightGBM regression (rank.lambdamart_grade), the rank score's RMSE next to it
    assert lm.has_grade_head and lm.info["grade_rounds"] >= 1 and r["grade_head"] == 1.0
    assert np.isfinite(r["rmse_rank_score"])
    lm.grade_booster = None  # without it the ranking score is the grade
    assert grade_scorer_for(lm) is None


def test_per_query_wins_losses_and_ties_per_slice():
    rc = RankConfig(relevant_min_label=0.75, eval_k=10, recall_k=10, long_query_tokens=3)
    rel = Relevance(query_ids=["q0", "q1", "q2"], queries=["drill", "cordless drill battery", "saw"],
                    rows=[np.array([0]), np.array([1]), np.array([2])], gains=[np.ones(1), np.ones(1), np.ones(1)])
    r = Rankings()
    for qi, (mine, theirs) in enumerate([((0, 1), (1, 0)), ((1, 2), (2, 1)), ((2, 0), (2, 0))]):
        # "model" ranks the relevant row first on q0 and q1; "base" only on q2 (a tie there)
        items = np.array([0, 1, 2])
        r.add("model", items, np.array([1.0 if i == mine[0] else 0.5 if i == mine[1] else 0.1 for i in items]))
        r.add("base", items, np.array([1.0 if i == theirs[0] else 0.5 if i == theirs[1] else 0.1 for i in items]))
    no_image = np.array([True, False, False])
    pq = per_query(r, rel, no_image, rc)
    vs = versus(pq, "model", ["model", "base"])
    assert set(vs) == {"base"} and set(vs["base"]) == set(SLICES)
    a = vs["base"]["all"]
    assert (a["wins"], a["losses"], a["ties"], a["queries"]) == (2, 0, 1, 3)
    assert vs["base"]["long_queries"]["wins"] == 1 and vs["base"]["long_queries"]["queries"] == 1
    # q0's relevant row has no image; q1 and q2's do
    assert vs["base"]["no_image_products"]["queries"] == 1 and vs["base"]["image_products"]["queries"] == 2
    assert a["delta"] == pytest.approx((1 - 1 / np.log2(3)) * 2 / 3)


def _m(v, **slices):
    out = {s: {"ndcg_at_10": v, "queries": 50} for s in SLICES}
    for s, x in slices.items():
        out[s] = {"ndcg_at_10": x, "queries": 50}
    return out


def test_gate_refuses_a_slice_that_regresses_against_a_baseline():
    rc = RankConfig(slice_regression_max=0.05, gate_slices=["short_queries", "long_queries"])
    base = {"bm25": _m(0.5, long_queries=0.6), "text_cosine": _m(0.4)}
    # better than the champion everywhere, but long queries trail BM25 by 0.08: refused
    ok, why = decide(_m(0.7, long_queries=0.52), _m(0.5, long_queries=0.45), rc, base)
    assert not ok and any("long_queries regresses against baseline bm25" in w for w in why)
    # also the first model (no champion) is refused
    ok, why = decide(_m(0.7, long_queries=0.52), None, rc, base)
    assert not ok and "no current champion, but" in why[0]
    # within the threshold: promoted
    assert decide(_m(0.7, long_queries=0.56), _m(0.5, long_queries=0.45), rc, base)[0]
    # a slice that is not configured is not gated
    assert decide(_m(0.7, no_image_products=0.1), None, rc, base)[0]
    # too few queries in the slice: not gated
    few = _m(0.7, long_queries=0.52)
    few["long_queries"]["queries"] = 5
    assert decide(few, None, rc.model_copy(update={"slice_min_queries": 20}), base)[0]
    # not configured (the default): no baseline check
    assert decide(_m(0.7, long_queries=0.52), None, RankConfig(), base)[0]


def test_a_model_that_loses_to_a_baseline_overall_is_never_promoted_not_even_the_first():
    base = {"bm25": _m(0.074), "text_cosine": _m(0.05)}
    # the 1M bench's first model: 0.069 against BM25's 0.074, no champion yet -> refused (the default)
    ok, why = decide(_m(0.069), None, RankConfig(), base)
    assert not ok and "loses to a baseline" in why[0]
    assert any("< best baseline bm25 0.0740" in w for w in why)
    # also against a champion it beats
    ok, why = decide(_m(0.069), _m(0.03), RankConfig(), base)
    assert not ok and any("< best baseline bm25" in w for w in why)
    # a tie with the best baseline passes at the default gain 0; a required gain refuses it
    assert decide(_m(0.074), None, RankConfig(), base)[0]
    assert not decide(_m(0.074), None, RankConfig(min_gain_over_baselines=0.01), base)[0]
    ok, why = decide(_m(0.09), None, RankConfig(min_gain_over_baselines=0.01), base)
    assert ok and any(">= best baseline bm25 0.0740" in w for w in why)
    # switched off, or no baselines measured: no check
    assert decide(_m(0.069), None, RankConfig(min_gain_over_baselines=None), base)[0]
    assert decide(_m(0.069), None, RankConfig(), {})[0]
    # a baseline without a finite value does not count
    assert decide(_m(0.069), None, RankConfig(), {"image_cosine": _m(float("nan"))})[0]


def test_match_features_count_words_typos_numbers_units_and_fields_separately():
    from mmpipeline.retrieval.features import FIELD_MATCH_FEATURES, MATCH_FEATURES, numbers_and_units

    products = pd.DataFrame([
        {"product_id": "a", "title": "Ceiling Mounted Lighting Fixtures 3/4-inch Brass", "brand": "Hampton",
         "description": "a lamp", "attributes": [("finish", "oil rubbed bronze")]},
        {"product_id": "b", "title": "Wall Mounted Lighting Fixture 1/2 in. Chrome", "brand": "Acme",
         "description": "ceiling fixture", "attributes": [("finish", "chrome")]},
        {"product_id": "c", "title": "Garden Hose", "brand": "", "description": "", "attributes": []},
    ])
    basis = np.eye(3, dtype=np.float32)
    fz = PairFeaturizer(products, {"text": (["a", "b", "c"], basis)})
    assert set(MATCH_FEATURES) <= set(fz.active_features())
    q = "ceiling mounted lighting fixures 3/4 in. bronze"
    f = fz.scalar_features([q] * 3, ["x"] * 3, ["a", "b", "c"])
    # exact words in the title: ceiling mounted lighting 3 4 (not the misspelt 'fixures')
    assert f["title_matches"].tolist() == [5.0, 3.0, 0.0]
    # typos / plural forms match fuzzily: 'fixures' ~ 'fixtures' (a) and 'fixture' (b)
    assert f.loc[0, "title_fuzzy_coverage"] > f.loc[1, "title_fuzzy_coverage"] > f.loc[2, "title_fuzzy_coverage"] == 0
    assert f["last_word_in_title"].tolist() == [0.0, 0.0, 0.0]  # 'bronze' is in a's attributes, not its title
    assert f["attributes_coverage"].tolist() == [pytest.approx(1 / 8), 0.0, 0.0]
    assert f["description_coverage"].tolist() == [0.0, pytest.approx(1 / 8), 0.0]
    # numbers and number+unit pairs: 3/4 in. == 3/4-inch, not 1/2 in.
    assert f["number_coverage"].tolist() == [1.0, 0.0, 0.0] and f["unit_coverage"].tolist() == [1.0, 0.0, 0.0]
    assert f["has_query_number"].tolist() == [1.0, 1.0, 1.0]
    assert numbers_and_units('3/4" x 8 ft. 10.0 gal') == ({"3/4", "8", "10"}, {"3/4 in", "8 ft", "10 gal"})
    g = fz.scalar_features(["garden hose", "lighting fixtures"], ["y", "z"], ["c", "a"])
    assert g["query_in_title"].tolist() == [1.0, 1.0] and g["last_word_in_title"].tolist() == [1.0, 1.0]
    assert g.loc[0, "title_set_ratio"] == 1.0 and g["has_query_number"].tolist() == [0.0, 0.0]
    # off (rank.match_features=false): absent from the model; a title-only catalog has no field columns
    assert not set(MATCH_FEATURES) & set(PairFeaturizer(products, {"text": (["a", "b", "c"], basis)},
                                                        match_features=False).active_features())
    title_only = PairFeaturizer(products[["product_id", "title"]], {"text": (["a", "b", "c"], basis)})
    assert not set(FIELD_MATCH_FEATURES) & set(title_only.active_features())


def test_grade_rmse_calibration_is_monotone_not_linear():
    from mmpipeline.rank.evaluation import calibrated_rmse

    # grades follow the score as a step (what a ranking score does): a line cannot fit it, an isotonic map can
    sv = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    gv = np.array([1.0, 1.0, 1.0, 3.0, 3.0, 3.0])
    out = calibrated_rmse(sv, gv, sv, gv, (1.0, 3.0), mean_grade=2.0)
    assert out["rmse"] == pytest.approx(0.0, abs=1e-9) and out["rmse_linear"] > 0.3


def test_complete_grades_score_unjudged_partial_matches_and_bound_a_perfect_reranker():
    """bench quality's complete grades: under the sampled judgments an unjudged partial match counts
    as irrelevant, so even a perfect reranker scores below 1; graded completely it scores 1."""
    from types import SimpleNamespace

    from mmpipeline.bench.quality import complete_grades
    from mmpipeline.sources.attribute_queries import AttributeGrader

    attrs = [{"gender": "Men", "colour": "Navy Blue", "article_type": "Shirts"}] * 2 + [
        {"gender": "Women", "colour": "Navy Blue", "article_type": "Shirts"},  # 2: partial, judged
        {"gender": "Women", "colour": "Navy Blue", "article_type": "Shirts"},  # 3: partial, not judged
        {"gender": "Men", "colour": "Red", "article_type": "Shirts"},  # 4: partial, not judged
        {"gender": "Women", "colour": "Red", "article_type": "Shirts"},  # 5: grade 1
        {"gender": "Men", "colour": "Navy Blue", "article_type": "Watches"},  # 6: judged grade 0
        {"gender": "Unisex", "colour": "Red", "article_type": "Watches"}]
    grader = AttributeGrader(attrs, ["gender", "colour", "article_type"], required=["article_type"], min_products=2)
    rel = Relevance(["q1", "q2"], ["men navy blue shirts", "no such query"],
                    [np.array([0, 1, 2, 6]), np.array([0])], [np.array([1.0, 1.0, 2 / 3, 0.0]), np.array([1.0])])
    r = Rankings()
    every = np.arange(8)
    r.add("a", every, np.array([8, 7, 4, 6, 5, 3, 2, 1], float))  # true order, unjudged partials before the judged one
    r.add("b", every, np.array([7, 6, 1, 1, 1, 1, 8, 1], float))  # the watch first
    for s in ("a", "b"):
        r.add(s, every, np.zeros(8))  # q2: no grades, not counted
    rc = SimpleNamespace(eval_k=3, recall_k=5, relevant_min_label=0.3)
    out = complete_grades(r, rel, grader, rc, "a")
    assert out["queries"] == 1 and out["unmatched_queries"] == 1
    idcg = 1 + 1 / np.log2(3) + (2 / 3) / 2
    assert out["systems"]["a"] == 1.0
    assert out["systems"]["b"] == pytest.approx(round((1 / np.log2(3) + 1 / 2) / idcg, 4))
    # the oracle reranks a's items by complete grade (ties by a's score): a's own order here, which the
    # sampled judgments score (1 + 1/log2(3) + 0) / idcg: row 3 is a grade-2 product nobody judged
    assert out["oracle"] == {"reranks": "a", "ndcg_at_3_complete_grades": 1.0,
                             "ndcg_at_3_sampled_judgments": round((1 + 1 / np.log2(3)) / idcg, 4)}
