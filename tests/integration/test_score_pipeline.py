"""Score -> publish -> rollback on real Spark/Delta/MLflow/Great Expectations with a tiny catalog.

Tiny pyfunc rankers are registered in a tmp sqlite MLflow store: one that scores sensibly (sum of
the numeric model inputs) and one that outputs NaN. Silver and gold tables are written through the
lake with their registered schemas.
"""

from __future__ import annotations

import datetime as dt
import sys

import numpy as np
import pandas as pd
import pytest

from mmpipeline.context import RunContext, StageError
from mmpipeline.schemas import table

D1, D2, D3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)
COLOURS = ["red", "blue", "green", "black", "white"]
ARTICLES = ["shirt", "shoe", "bag", "watch"]
DIM = 8


def _full(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Add the registered columns a test frame does not set (as nulls)."""
    for c, _ in table(name).columns:
        if c not in df.columns:
            df[c] = None
    return df


def _qid(q: str) -> str:
    from mmpipeline.score.queries import normalize_query, query_id_for

    return query_id_for(normalize_query(q))


def build_lake(lake, n_products: int = 80, seed: int = 0) -> None:
    """Products with colour/article titles, judgments for colour+article queries, embeddings
    whose text and image vectors point towards the product's (colour, article) direction."""
    rng = np.random.default_rng(seed)
    rows = []
    basis = rng.normal(size=(len(COLOURS) + len(ARTICLES), DIM)).astype(np.float32)
    for i in range(n_products):
        c, a = COLOURS[i % len(COLOURS)], ARTICLES[(i // len(COLOURS)) % len(ARTICLES)]
        rows.append({"product_id": f"p{i:03d}", "title": f"{c} {a} model {i}", "colour": c, "article": a})
    prod = pd.DataFrame(rows)
    silver = _full("silver.products", prod[["product_id", "title"]].copy().assign(run_date=D1, image_status="ok"))
    lake.write("silver.products", silver, mode="overwrite")
    queries = sorted({f"{c} {a}" for c in COLOURS for a in ARTICLES})
    qdf = pd.DataFrame({"query": queries})
    qdf["query_norm"] = qdf["query"]
    qdf["query_id"] = [_qid(q) for q in queries]
    qdf["frequency"] = np.arange(len(qdf), 0, -1)
    lake.write("silver.queries", _full("silver.queries", qdf.assign(run_date=D1)), mode="overwrite")
    jrows = []
    for q, qid in zip(qdf["query"], qdf["query_id"]):
        c, a = q.split()
        for _, p in prod.iterrows():
            if p["colour"] == c or p["article"] == a:
                jrows.append({"query_id": qid, "query_norm": q, "product_id": p["product_id"],
                              "grade": 3.0 if (p["colour"] == c and p["article"] == a) else 1.0})
    lake.write("silver.judgments", _full("silver.judgments", pd.DataFrame(jrows).assign(run_date=D1, source="test")),
               mode="overwrite")

    def vec(c, a):
        v = basis[COLOURS.index(c)] + basis[len(COLOURS) + ARTICLES.index(a)]
        return (v + 0.1 * rng.normal(size=DIM)).astype(np.float32)

    now = pd.Timestamp("2026-11-01", tz="UTC")
    emb = []
    for _, p in prod.iterrows():
        emb.append({"product_id": p["product_id"], "modality": "text", "model_name": "tiny-text",
                    "vector": vec(p["colour"], p["article"]).tolist()})
        if int(p["product_id"][1:]) % 4:  # every 4th product has no image
            emb.append({"product_id": p["product_id"], "modality": "image", "model_name": "tiny-image",
                        "vector": vec(p["colour"], p["article"]).tolist()})
    pe = pd.DataFrame(emb).assign(model_version="1", content_hash="h", dim=DIM, run_date=D1, embedded_at=now)
    lake.write("gold.product_embeddings", pe, mode="overwrite")
    qe = pd.DataFrame([{"query_id": qid, "modality": "text", "model_name": "tiny-text",
                        "vector": vec(*q.split()).tolist()} for q, qid in zip(qdf["query"], qdf["query_id"])])
    qe = qe.assign(model_version="1", content_hash="h", dim=DIM, run_date=D1, embedded_at=now)
    lake.write("gold.query_embeddings", qe, mode="overwrite")


def register_models(cfg) -> dict[str, str]:
    """Register a sensible and a NaN-emitting pyfunc model; returns {kind: version}."""
    import cloudpickle
    import mlflow

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Spark workers cannot import tests/
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow.tracking_uri)  # earlier tests may have pointed the registry elsewhere
    # artifacts under the test's tmp dir, not ./mlruns in the checkout
    exp_id = mlflow.create_experiment("score-tests", artifact_location=cfg.mlflow.artifact_root)
    mlflow.set_experiment(experiment_id=exp_id)
    versions = {}
    for kind, model in (("good", SumModel()), ("nan", NanModel())):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=["mlflow"],
                                           registered_model_name=cfg.mlflow.model_name)
        versions[kind] = str(info.registered_model_version)
    return versions


def set_alias(cfg, version: str, alias: str = "champion") -> None:
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow.tracking_uri)  # earlier tests may have pointed the registry elsewhere
    mlflow.MlflowClient().set_registered_model_alias(cfg.mlflow.model_name, alias, version)


try:
    import mlflow.pyfunc as _pyfunc

    class SumModel(_pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            x = model_input.select_dtypes("number").fillna(0.0)
            return x.sum(axis=1).to_numpy(np.float64)

    class NanModel(_pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.full(len(model_input), np.nan)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture()
def scored_env(make_config, tmp_path):
    cfg = make_config({"score.head_queries": 12, "score.candidates_k": 15, "score.output_k": 12,
                       "score.min_results_per_query": 10, "score.batch_size": 100,
                       "rank.text_model_name": "tiny-text", "rank.image_model_name": "tiny-image",
                       "mlflow.model_name": "test-ranker"})
    ctx = RunContext.create(cfg, D1)
    build_lake(ctx.lake)
    versions = register_models(cfg)
    return cfg, versions


def _ctx(cfg, d, **kw):
    return RunContext.create(cfg, d, **kw)


@pytest.mark.slow
def test_score_publish_nan_rejected_and_rollback(scored_env, spark, capsys):
    from mmpipeline.score import index, job, publish, search

    cfg, versions = scored_env
    set_alias(cfg, versions["good"])

    s1 = job.run(_ctx(cfg, D1))
    assert s1["queries"] == 12 and s1["non_finite_scores"] == 0
    assert s1["candidate_recall"]["recall_at_k_union"] > 0.5
    lake = _ctx(cfg, D1).lake
    r1 = lake.read_pandas("gold.search_ranking")
    assert set(r1["model_version"]) == {versions["good"]}
    assert r1.groupby("query_id")["rank"].apply(lambda r: sorted(r) == list(range(1, len(r) + 1))).all()
    assert (r1.groupby("query_id").size() == 12).all()
    pv = lake.read_pandas("gold.product_vectors")
    assert len(pv) == 80 and set(pv["modalities"]) == {"text", "text+image"}
    assert np.allclose([np.linalg.norm(v) for v in pv["vector"]], 1.0, atol=1e-5)

    # idempotent re-run: same rows, no duplicates
    job.run(_ctx(cfg, D1))
    r1b = lake.read_pandas("gold.search_ranking")
    key = ["query_id", "rank"]
    pd.testing.assert_frame_equal(r1.sort_values(key).reset_index(drop=True), r1b.sort_values(key).reset_index(drop=True))
    assert len(lake.read_pandas("gold.product_vectors")) == 80

    p1 = publish.run(_ctx(cfg, D1))
    assert p1["published"] and p1["rows"] == len(r1)
    assert publish.run(_ctx(cfg, D1)).get("already_current")  # publishing again is a no-op

    # D2 on the Spark engine (queries partitioned; each Python worker loads the model, featuriser and the
    # saved indexes once, whatever the number of partitions): the same candidates, recall and rows
    cfg.score.spark_partitions = 6
    ctx2 = _ctx(cfg, D2, options={"engine": "spark"})
    ctx2.__dict__["spark"] = spark
    s2 = job.run(ctx2)
    cfg.score.spark_partitions = None
    assert s2["ranking_rows"] == len(r1)
    assert s2["candidate_pairs"] == s1["candidate_pairs"] and s2["candidate_recall"] == s1["candidate_recall"]
    assert 1 <= s2["worker_state_loads"] <= spark.sparkContext.defaultParallelism < 6
    r2 = lake.read_pandas("gold.search_ranking")
    r2 = r2[pd.to_datetime(r2["run_date"]).dt.date == D2]
    a, b = r1.sort_values(key).reset_index(drop=True), r2.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[["query_id", "rank", "product_id", "model_version", "candidate_source"]],
                                  b[["query_id", "rank", "product_id", "model_version", "candidate_source"]])
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)
    p2 = publish.run(_ctx(cfg, D2))
    assert p2["index_version"] > p1["index_version"]

    # a NaN-emitting champion: scoring writes the run, publishing refuses, D2 stays current
    set_alias(cfg, versions["nan"])
    s3 = job.run(_ctx(cfg, D3))
    assert s3["non_finite_scores"] == s3["ranking_rows"] > 0
    with pytest.raises(StageError, match="publish refused"):
        publish.run(_ctx(cfg, D3))
    cur = index.current_event(lake)
    assert pd.Timestamp(cur["run_date"]).date() == D2
    served = lake.read_pandas("gold.search_index")
    assert set(pd.to_datetime(served["run_date"]).dt.date) == {D2} and np.isfinite(served["score"]).all()
    val = lake.read_pandas("ops.validation")
    d3 = val[pd.to_datetime(val["run_date"]).dt.date == D3].set_index("check_name")
    assert not d3.loc["scores_finite", "success"] and d3.loc["ranks_dense_unique", "success"]

    # rollback (default: the run before the current one), then forward again by run date
    rb = index.rollback(cfg)
    assert rb["run_date"] == str(D1)
    served = lake.read_pandas("gold.search_index")
    assert set(pd.to_datetime(served["run_date"]).dt.date) == {D1}
    assert len(served) == p1["rows"]
    index.rollback(cfg, run_date=D2)
    assert set(pd.to_datetime(lake.read_pandas("gold.search_index")["run_date"]).dt.date) == {D2}
    with pytest.raises(StageError, match="never published"):
        index.rollback(cfg, run_date=D3)
    index.rollback(cfg, version=p1["index_version"])
    assert pd.Timestamp(index.current_event(lake)["run_date"]).date() == D1

    status = index.index_status(cfg)
    assert status["current"]["run_date"] == str(D1)
    assert [p["run_date"] for p in status["published"]] == [str(D2), str(D1)]

    capsys.readouterr()
    res = search.search(cfg, "Blue  Shirt", k=10)
    out = capsys.readouterr().out
    assert len(res["results"]) == 10 and "closest" not in out and f"v{versions['good']}" in out
    top = res["results"][0]["title"]
    assert "blue" in top and "shirt" in top

    # the benchmark on the same lake (kept in this test: the lake and models are already built)
    from mmpipeline.bench.score import main as bench

    set_alias(cfg, versions["good"])
    out = bench(cfg, {"head_queries": 6, "baseline_queries": 3})
    ds = out["datasets"][cfg.name]
    assert ds["queries"] == 6 and ds["candidate_pairs"] > 0 and ds["pairs_scored_per_second"] > 0
    assert ds["baseline_per_query_calls"]["queries"] == 3 and ds["non_finite_scores"] == 0
    assert {"candidates", "score", "write", "stage_total"} <= set(ds["stage_seconds"])
    # the bench writes to a throw-away lake: the served index is untouched
    assert pd.Timestamp(index.current_event(lake)["run_date"]).date() == D1


def _bad(kind: str, good: pd.DataFrame) -> pd.DataFrame:
    """A D2 ranking made from D1's good one, broken in one way."""
    r = good.copy()
    r["run_date"] = D2
    first = r["query_id"].iloc[0]
    if kind == "one_query":
        return r[r["query_id"] == first]
    if kind == "unknown_ids":
        return r.assign(product_id="gone-" + r["product_id"])
    if kind == "sentinel":  # the bottom half of every list at -1e30 (ranks still follow scores)
        return r.assign(score=np.where(r["rank"] > 6, -1e30, r["score"]))
    if kind == "nan":
        return r.assign(score=np.where(r["rank"] == 3, np.nan, r["score"]))
    if kind == "duplicates":  # rank 2 repeats rank 1's product
        top = r[r["rank"] == 1].set_index("query_id")["product_id"]
        r.loc[r["rank"] == 2, "product_id"] = r.loc[r["rank"] == 2, "query_id"].map(top)
        return r
    if kind == "constant":
        return r.assign(score=0.5)
    if kind == "rank_order":  # ranks no longer follow the scores
        return r.assign(score=r["score"] * -1.0)
    if kind == "wrong_model":
        return r.assign(model_version="999")
    raise ValueError(kind)


BAD_KINDS = {"one_query": "covers_query_set", "unknown_ids": "products_in_catalog", "sentinel": "scores_not_sentinel",
             "nan": "scores_finite", "duplicates": "product_once_per_query", "constant": "scores_not_constant",
             "rank_order": "ranks_follow_scores", "wrong_model": "model_is_expected_version"}


@pytest.mark.slow
def test_publish_gate_refuses_each_kind_of_bad_ranking_and_old_dates(scored_env, spark, capsys):
    """Bad rankings written straight into gold.search_ranking (no ops.score_runs row for D2): each is
    refused by the check that names its defect; the previous index stays current and is served."""
    from mmpipeline.score import index, job, publish, search

    cfg, versions = scored_env
    # no Data Docs site for the dozen gate runs here (its rendering is covered by test_validate_stage.py)
    cfg.quality.data_docs = False
    set_alias(cfg, versions["good"])
    job.run(_ctx(cfg, D1))
    lake = _ctx(cfg, D1).lake
    p1 = publish.run(_ctx(cfg, D1))
    good = lake.read_pandas("gold.search_ranking")
    served_before = lake.read_pandas("gold.search_index").sort_values(["query_id", "rank"]).reset_index(drop=True)
    index_v = lake.version("gold.search_index")
    for kind, check in BAD_KINDS.items():
        lake.write("gold.search_ranking", _bad(kind, good), mode="overwrite", partition={"run_date": D2})
        with pytest.raises(StageError, match="publish refused") as ei:
            publish.run(_ctx(cfg, D2))
        assert check in str(ei.value), (kind, str(ei.value))
        val = lake.read_pandas("ops.validation")
        val = val[(pd.to_datetime(val["run_date"]).dt.date == D2)].set_index("check_name")
        assert not val.loc[check, "success"], kind
        # the previous version stays current, untouched, and is what search serves
        assert lake.version("gold.search_index") == index_v, kind
        cur = index.current_event(lake)
        assert pd.Timestamp(cur["run_date"]).date() == D1 and int(cur["index_version"]) == p1["index_version"]
        served = lake.read_pandas("gold.search_index").sort_values(["query_id", "rank"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(served, served_before)
        res = search.search(cfg, "blue shirt", k=3)
        assert res["run_date"] == str(D1) and len(res["results"]) == 3, kind
    ev = lake.read_pandas("ops.index_versions")
    assert (ev["action"] == "reject").sum() == len(BAD_KINDS)

    # a good D2 (scored by the stage) publishes after the rejected ones; then the older D1 is refused
    # (the forced publish of an older run and the rollback after it: test_faults_serving.py::
    # test_next_date_then_an_earlier_date_is_refused_unless_forced, on the real stage chain)
    job.run(_ctx(cfg, D2))
    p2 = publish.run(_ctx(cfg, D2))
    assert p2["published"] and not p2.get("already_current")
    with pytest.raises(StageError, match=r"older than the served index .*force=true"):
        publish.run(_ctx(cfg, D1))
    assert pd.Timestamp(index.current_event(lake)["run_date"]).date() == D2
    assert set(pd.to_datetime(lake.read_pandas("gold.search_index")["run_date"]).dt.date) == {D2}

    # the champion moved after scoring: the D3 ranking was made by a version that is no longer it
    job.run(_ctx(cfg, D3))
    set_alias(cfg, versions["nan"])
    with pytest.raises(StageError, match="model_is_expected_version"):
        publish.run(_ctx(cfg, D3))
    set_alias(cfg, versions["good"])
