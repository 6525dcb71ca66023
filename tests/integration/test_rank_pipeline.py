"""build-training-data -> train -> evaluate/gate on a tiny synthetic catalog, with a real Delta lake
(delta-rs) and a real MLflow sqlite store + registry in tmp.

The synthetic world needs both modalities: queries are "<colour> <article>", titles name the article
but only half of them the colour, image vectors carry colour and article (they live in the text
space), and a quarter of the products have no image.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from mmpipeline.context import RunContext
from mmpipeline.schemas import table

D1 = dt.date(2026, 11, 1)
COLOURS = ["red", "blue", "green", "black"]
ARTICLES = ["shirt", "shoe", "bag"]
DIM = 12


def _full(name: str, df: pd.DataFrame) -> pd.DataFrame:
    for c, _ in table(name).columns:
        if c not in df.columns:
            df[c] = None
    return df


def build_world(lake, n_products: int = 96, seed: int = 0, run_date: dt.date = D1) -> None:
    rng = np.random.default_rng(seed)
    basis = np.eye(DIM, dtype=np.float32)[: len(COLOURS) + len(ARTICLES)]

    def vec(colour, article, noise=0.15):
        v = np.zeros(DIM, np.float32)
        if colour:
            v += basis[COLOURS.index(colour)]
        v += basis[len(COLOURS) + ARTICLES.index(article)]
        return (v + noise * rng.normal(size=DIM)).astype(np.float32)

    prods, emb = [], []
    for i in range(n_products):
        c, a = COLOURS[i % 4], ARTICLES[(i // 4) % 3]
        says_colour = (i // 12) % 2 == 0
        title = f"brand{i % 5} {c + ' ' if says_colour else ''}{a} item{i}"
        pid = f"p{i:03d}"
        prods.append({"product_id": pid, "title": title, "colour": c, "article": a,
                      "price": float(10 + i % 7), "popularity": float(i % 11)})
        emb.append({"product_id": pid, "modality": "text", "model_name": "tiny-text",
                    "vector": vec(c if says_colour else None, a).tolist()})
        if i % 4 != 3:
            emb.append({"product_id": pid, "modality": "image", "model_name": "tiny-image", "vector": vec(c, a).tolist()})
    prod = pd.DataFrame(prods)
    lake.write("silver.products", _full("silver.products", prod[["product_id", "title", "price", "popularity"]]
                                        .assign(run_date=run_date, image_status="ok")), mode="overwrite")
    now = pd.Timestamp(run_date, tz="UTC")
    lake.write("gold.product_embeddings", _full("gold.product_embeddings", pd.DataFrame(emb).assign(
        model_version="1", content_hash="h", dim=DIM, run_date=run_date, embedded_at=now)), mode="overwrite")
    jrows, qemb = [], []
    for c in COLOURS:
        for a in ARTICLES:
            for variant in ("", " item"):  # two phrasings per (colour, article): more queries per split
                q = f"{c} {a}{variant}"
                qid = f"q-{c}-{a}{variant.strip()}"
                qemb.append({"query_id": qid, "modality": "text", "model_name": "tiny-text",
                             "vector": vec(c, a, 0.05).tolist()})
                for _, p in prod.iterrows():
                    if p["article"] == a:
                        jrows.append({"query_id": qid, "query_norm": q, "product_id": p["product_id"],
                                      "grade": 3.0 if p["colour"] == c else 1.0})
    lake.write("silver.judgments", _full("silver.judgments", pd.DataFrame(jrows).assign(run_date=run_date, source="test")),
               mode="overwrite")
    lake.write("gold.query_embeddings", _full("gold.query_embeddings", pd.DataFrame(qemb).assign(
        model_version="1", content_hash="h", dim=DIM, run_date=run_date, embedded_at=now)), mode="overwrite")


@pytest.fixture()
def rank_cfg(make_config):
    return make_config({
        "rank.epochs": 6, "rank.hidden_dim": 16, "rank.batch_queries": 8, "rank.negatives_random": 4,
        "rank.negatives_hard": 4, "rank.hard_pool_k": 10, "rank.candidates_k": 20, "rank.recall_k": 20,
        "rank.patience": 3, "rank.lr": 0.01, "rank.split": {"train": 0.5, "valid": 0.25, "test": 0.25},
        "rank.device": "cpu", "mlflow.model_name": "test-ranker",
    })


@pytest.mark.slow
def test_build_train_evaluate_and_gate(rank_cfg):
    import mlflow

    from mmpipeline.rank import data, evaluate, train
    from mmpipeline.retrieval.features import FEATURE_COLUMNS, PairFeaturizer
    from mmpipeline.rank.registry import alias_version, load_ranker

    ctx = RunContext.create(rank_cfg, D1)
    build_world(ctx.lake)

    s = data.run(ctx)
    assert s["rows"] > 0 and s["test_queries"] > 0 and s["train_queries"] > 0
    td = ctx.lake.read_pandas("gold.training_data")
    assert td.groupby("query_id")["split"].nunique().max() == 1  # no query in two splits
    assert set(td["source"]) >= {"judgment", "hard_negative", "random_negative"}
    # a re-run of the run date on the spark engine (negatives and features per query partition on the
    # executors, the featuriser loaded once per Python worker) replaces the partition with the same rows
    rank_cfg.rank.data_engine, rank_cfg.rank.data_partitions = "spark", 3
    s2 = data.run(ctx)
    td2 = ctx.lake.read_pandas("gold.training_data")
    key = ["split", "query_id", "source", "product_id"]
    pd.testing.assert_frame_equal(td2.sort_values(key).reset_index(drop=True),
                                  td.sort_values(key).reset_index(drop=True))
    same = [k for k in s if k not in ("version", "engine")]
    assert {k: s2[k] for k in same} == {k: s[k] for k in same}

    t1 = train.run(ctx)
    assert t1["alias"] == "challenger"
    # the registered model: features from the featurizer in, one score per row out
    fz = PairFeaturizer.from_lake(ctx.lake, rank_cfg)
    feats = fz.transform(["red shirt", "red shirt"], ["q-red-shirt", "q-red-shirt"], ["p000", "p003"])
    assert list(feats.columns) == FEATURE_COLUMNS
    pyf = mlflow.pyfunc.load_model(f"models:/{rank_cfg.mlflow.model_name}@challenger")
    assert np.isfinite(np.asarray(pyf.predict(feats))).all() and len(pyf.predict(feats)) == 2
    ranker = load_ranker(rank_cfg, "challenger")
    assert ranker.version == t1["version"] and ranker.run_id == t1["mlflow_run_id"]
    np.testing.assert_allclose(ranker.predict(feats), np.asarray(pyf.predict(feats)), rtol=1e-5)
    run = mlflow.get_run(t1["mlflow_run_id"])
    assert run.inputs.dataset_inputs, "training table version logged as input dataset"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(t1["mlflow_run_id"], "plots")}
    assert {"plots/learning_curves.png", "plots/score_by_grade.png"} <= arts

    # train is keyed by run date + settings/data fingerprint: a retry reuses the registered version
    client = mlflow.MlflowClient()
    n_versions = len(client.search_model_versions(f"name='{rank_cfg.mlflow.model_name}'"))
    real_featurizer_for = train.featurizer_for

    def no_featurizer(*a, **k):  # the retry is found before the featuriser is built (minutes at 1M)
        raise AssertionError("a retry of a trained date built the featuriser")

    train.featurizer_for = no_featurizer
    try:
        t1b = train.run(ctx)
    finally:
        train.featurizer_for = real_featurizer_for
    assert t1b["reused"] and t1b["version"] == t1["version"] and t1b["train_key"] == t1["train_key"]
    assert len(client.search_model_versions(f"name='{rank_cfg.mlflow.model_name}'")) == n_versions
    assert str(alias_version(rank_cfg, "challenger").version) == t1["version"]

    # first model, no champion: promoted. The process dies when it moves the alias (after its ops
    # rows): the retry completes the recorded decision with the same reasons
    from mlflow import MlflowClient

    real_set_alias = MlflowClient.set_registered_model_alias

    def dies(self, name, alias, version):
        if alias == "champion":
            raise RuntimeError("killed before the champion alias moved")
        return real_set_alias(self, name, alias, version)

    MlflowClient.set_registered_model_alias = dies
    try:
        with pytest.raises(RuntimeError, match="killed before"):
            evaluate.run(ctx)
    finally:
        MlflowClient.set_registered_model_alias = real_set_alias
    assert alias_version(rank_cfg, "champion") is None
    recorded = ctx.lake.read_pandas("ops.rank_decisions")
    assert len(recorded) == 1 and bool(recorded["promoted"].iloc[0])
    e1 = evaluate.run(ctx)
    assert e1["promoted"] and e1["recorded"] and str(alias_version(rank_cfg, "champion").version) == t1["version"]
    assert e1["reasons"] == json.loads(recorded["reasons"].iloc[0])
    # evaluate again: the same decision, the same champion, no second decision row
    e1b = evaluate.run(ctx)
    assert e1b["promoted"] and e1b["reasons"] == e1["reasons"] and e1b["challenger_version"] == t1["version"]
    assert str(alias_version(rank_cfg, "champion").version) == t1["version"]
    assert len(ctx.lake.read_pandas("ops.rank_decisions")) == 1
    systems = set(ctx.lake.read_pandas("ops.rank_evaluations")["system"])
    assert systems >= {"challenger", "bm25", "text_cosine", "image_cosine"}

    # a tie does not promote: the same weights registered again as a new challenger
    with mlflow.start_run():
        v_tie = train.log_and_register(ctx, ranker.model, fz, feats, "challenger")
    e_tie = evaluate.run(ctx)
    assert e_tie["challenger_version"] == v_tie != t1["version"]
    m = e_tie["ndcg_at_10"]
    assert m["challenger"] == m["champion"] and not e_tie["promoted"], e_tie["reasons"]
    assert str(alias_version(rank_cfg, "champion").version) == t1["version"]

    # a worse model (untrained, random weights) is not promoted
    from mmpipeline.rank.fusion import FusionConfig, build_ranker

    bad = build_ranker(FusionConfig(dim=fz.dim, fusion="concat", hidden_dim=4))
    with mlflow.start_run():
        v_bad = train.log_and_register(ctx, bad, fz, feats, "challenger")
    e2 = evaluate.run(ctx)
    assert e2["challenger_version"] == v_bad and not e2["promoted"]
    assert str(alias_version(rank_cfg, "champion").version) == t1["version"]
    dec = ctx.lake.read_pandas("ops.rank_decisions")
    assert dec["promoted"].tolist().count(True) == 1 and len(dec) == 3
    # the evaluate stage hands the baselines to the gate: with rank.slice_regression_max configured, the
    # untrained model is refused for trailing BM25 / text cosine, slice by slice, and the MLflow run
    # records the challenger's per-slice wins / losses against every baseline
    strict = rank_cfg.model_copy(update={"rank": rank_cfg.rank.model_copy(update={"slice_regression_max": 0.0})})
    e3 = evaluate.run(RunContext.create(strict, D1, full_refresh=True))
    assert not e3["promoted"] and any("regresses against baseline" in r for r in e3["reasons"]), e3["reasons"]
    logged = mlflow.get_run(e3["mlflow_run_id"]).data.metrics
    assert {"challenger_vs_bm25.all.wins", "challenger_vs_text_cosine.short_queries.losses"} <= set(logged)

    # with no champion, a model that does not beat the best baseline overall (by rank.min_gain_over_baselines;
    # 1.0 here, so that nothing can) is not promoted either: no champion, and scoring stops with one line
    from mmpipeline.context import StageError
    from mmpipeline.score.scoring import resolve_version

    client.delete_registered_model_alias(rank_cfg.mlflow.model_name, "champion")
    first = rank_cfg.model_copy(update={"rank": rank_cfg.rank.model_copy(update={"min_gain_over_baselines": 1.0})})
    e4 = evaluate.run(RunContext.create(first, D1, full_refresh=True))
    assert not e4["promoted"] and e4["reasons"][0].startswith("no current champion, but the challenger loses")
    assert any("< best baseline" in r and "rank.min_gain_over_baselines 1.0" in r for r in e4["reasons"])
    assert alias_version(rank_cfg, "champion") is None
    with pytest.raises(StageError, match="has alias 'champion'.*ops.rank_decisions"):
        resolve_version(rank_cfg, "champion")


@pytest.mark.slow
def test_quality_bench_reports_every_system(rank_cfg):
    from mmpipeline.bench.quality import main

    build_world(RunContext.create(rank_cfg, D1).lake)
    rank_cfg.run_date = D1
    out = main(rank_cfg, {"epochs": 2, "bench_fusions": ["concat", "weighted"], "colour_free": False,
                          "fusion": "concat", "lambdamart_rounds": 20})
    v = out["titles_as_given"]
    systems = v["systems"]
    assert set(systems) == {"bm25", "text_cosine", "image_cosine", "fusion_concat", "fusion_weighted", "lambdamart"}
    for s in systems.values():
        assert set(s) >= {"ndcg_at_10", "mrr", "recall_at_20", "slices"}
    assert "rmse_grade" in systems["fusion_concat"] and "modality_weights" in systems["fusion_weighted"]["training"]
    assert "rmse_grade" in systems["lambdamart"] and systems["lambdamart"]["training"]["rounds"] >= 1
    # the LambdaMART peer learns on exactly the ranker's features (images present here)
    assert v["ranker_features"] == systems["lambdamart"]["training"]["features_used"]
    assert {"cos_image", "has_image"} <= set(v["ranker_features"])
    # per-slice wins / losses of the default model against every baseline and the peer
    assert set(v["default_versus"]) == {"bm25", "text_cosine", "image_cosine", "lambdamart", "fusion_weighted"}
    c = v["default_versus"]["bm25"]["all"]
    assert c["wins"] + c["losses"] + c["ties"] == c["queries"] == v["queries"]
    assert v["summary"]["default_model"] == "fusion_concat" and "default_minus_lambdamart" in v["summary"]
    assert len(v["table"]) == 2 + len(systems)
    assert "colour_words_removed" not in out


def test_colour_words_are_removed_from_titles():
    from mmpipeline.bench.quality import colour_vocabulary, strip_words

    attrs = pd.Series([[("colour", "Navy Blue"), ("gender", "Men")], [("colour", "Red")], None, [("gender", "Women")]])
    vocab = colour_vocabulary(attrs, "colour")
    assert vocab[0] == "navy blue" and {"navy", "blue", "red"} <= set(vocab)
    assert strip_words(["Turtle Check Men Navy Blue Shirt", "Red Tape Shoe", "Bluetooth Speaker"], vocab) == [
        "Turtle Check Men Shirt", "Tape Shoe", "Bluetooth Speaker"]


def test_colour_free_catalog_keeps_every_field_but_the_colour():
    """bench quality's colour-free run rebuilds the featuriser from the catalog frame (not from the
    featuriser, which keeps only ids and an Arrow array of titles): the same products in the same order,
    colour words out of titles, descriptions and brands, the colour attribute dropped, the rest kept."""
    from mmpipeline.bench.quality import colour_free_catalog

    products = pd.DataFrame({
        "product_id": ["a", "b", "a"], "title": ["Red Shirt", "Blue Mug", "Navy Blue Shirt"],
        "description": ["a red cotton shirt", None, "navy blue cotton"], "brand": ["Redwood", "Acme", "Acme"],
        "attributes": [[("colour", "Red")], [("colour", "Blue"), ("size", "L")], [("colour", "Navy Blue")]],
        "price": [1.0, 2.0, 3.0]})
    out, changed = colour_free_catalog(products, ["navy blue", "navy", "blue", "red"], "colour")
    assert out["product_id"].tolist() == ["b", "a"]  # the last record of each id, as the featuriser keeps it
    assert out["title"].tolist() == ["Mug", "Shirt"] and changed == 2
    assert out["description"].tolist() == ["", "cotton"] and out["brand"].tolist() == ["Acme", "Acme"]
    assert out["attributes"].tolist() == [[("size", "L")], []] and out["price"].tolist() == [2.0, 3.0]
