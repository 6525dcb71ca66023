"""The tune-text-tower stage on a small slice of the Home Depot judgments: only training-split
queries are trained on, the tuned model is registered in a real MLflow registry, a re-run of the
same date reuses the version (a task is a transaction), and the embed stage's text encoder is the
promoted version (same recorded name, the registered version as model version)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmpipeline.context import RunContext
from mmpipeline.schemas import arrow_schema, table

D1 = dt.date(2026, 11, 1)
SMALL = {"embed.progress": False, "embed.max_text_length": 32, "text_tune.max_pairs": 48,
         "text_tune.batch_size": 16, "text_tune.max_seq_length": 24, "text_tune.max_eval_queries": 24,
         "text_tune.device": "cpu", "text_tune.max_eval_products": 120}


def _pairs(n_queries: int = 40) -> pd.DataFrame:
    from mmpipeline.rank.data import assign_split

    q = [f"q{i}" for i in range(n_queries)]
    rows = [{"query_id": qid, "query_norm": f"query {qid}", "product_id": f"p{k}", "label": lab}
            for i, qid in enumerate(q) for k, lab in ((i, 1.0), (i + 1, 0.8), (i + 2, 0.0))]
    df = pd.DataFrame(rows)
    df["split"] = assign_split(df["query_id"], {"train": 0.7, "valid": 0.15, "test": 0.15}).to_numpy()
    return df


def test_training_examples_use_only_train_split_queries_and_judged_hard_negatives(make_config):
    from mmpipeline.embed.text_tune import batches, eval_set, training_examples

    cfg = make_config({"text_tune.max_pairs": None})
    pairs = _pairs()
    texts = {f"p{k}": f"product {k}" for k in range(45)}
    ex = training_examples(pairs, texts, cfg)
    train_q = set(pairs.loc[pairs["split"] == "train", "query_id"])
    assert set(pairs["split"]) == {"train", "valid", "test"}
    assert set(ex["query_id"]) == train_q  # no valid/test query leaks into the fine-tune
    assert len(ex) == 2 * len(train_q)  # labels 1.0 and 0.8 are positives, 0.0 is not
    i = {int(q[1:]) for q in ex["query_id"]}
    assert all(ex["negative"] == [texts[f"p{int(q[1:]) + 2}"] for q in ex["query_id"]]) and i
    assert training_examples(pairs, texts, make_config({"text_tune.max_pairs": 5})).shape[0] == 5
    for b in batches(ex, 8, seed=0, epoch=0):  # never two positives of one query in a batch
        assert b["query_id"].is_unique and 2 <= len(b) <= 8
    qs, catalog = eval_set(pairs, list(texts), cfg)
    assert set(qs["query_id"]) == set(pairs.loc[pairs["split"] == "valid", "query_id"])
    assert all(0.0 not in g.values() for g in qs["gains"]) and len(catalog) == 45


def test_text_cosine_ndcg():
    from mmpipeline.embed.text_tune import text_cosine_ndcg

    ids = np.array(["a", "b", "c"], dtype=object)
    p = np.eye(3, dtype=np.float32)
    q = np.array([[1, 0.5, 0], [0, 0, 1]], dtype=np.float32)
    assert text_cosine_ndcg(q, p, ids, [{"a": 1.0}, {"c": 1.0}]) == pytest.approx(1.0)
    worse = text_cosine_ndcg(q, p, ids, [{"b": 1.0}, {"c": 1.0}])
    assert worse == pytest.approx((1 / np.log2(3) + 1) / 2)


def _write_silver(lake, shared, n_rows: int = 400) -> None:
    from mmpipeline.score.queries import normalize_query, query_id_for

    df = pd.read_csv(shared / "homedepot" / "relevance.csv", encoding="latin-1").head(n_rows)
    prods = df.drop_duplicates("product_uid")
    rows = [{"product_id": str(r.product_uid), "title": r.product_title, "image_status": "none",
             "run_date": D1, "_batch_id": "b1"} for r in prods.itertuples()]
    sch = arrow_schema(table("silver.products"))
    lake.merge("silver.products", pa.Table.from_pylist([{f: r.get(f) for f in sch.names} for r in rows], schema=sch))
    norm = df["search_term"].map(normalize_query)
    j = pd.DataFrame({"query_id": norm.map(query_id_for), "query_norm": norm, "product_id": df["product_uid"].astype(str),
                      "grade": df["relevance"].astype(float), "source": "test", "run_date": D1})
    lake.merge("silver.judgments", j.drop_duplicates(["query_id", "product_id"]))


@pytest.mark.slow
def test_tune_registers_a_version_and_a_rerun_reuses_it(make_config, shared_datasets):
    from mmpipeline.embed import models, registry, text_tune
    from mmpipeline.tracking import client

    from mmpipeline.embed import job
    from mmpipeline.retrieval.features import PairFeaturizer

    cfg = make_config({**SMALL, "text_tune.min_gain": -1.0, "embed.embed_images": False})  # promote whatever wins
    ctx = RunContext.create(cfg, D1)
    assert registry.text_tower_version(cfg) is None and models.text_spec(cfg).version.startswith("sha256:")
    _write_silver(ctx.lake, shared_datasets)
    job.run(ctx)  # the catalog night: frozen text vectors
    frozen_version = models.text_spec(cfg, tuned=False).version
    lake = ctx.lake
    assert text_tune.reembed(RunContext.create(cfg, D1))["skipped"].startswith("no re-embed: no text tower promoted")
    first = text_tune.run(ctx)
    assert first["trained"] and first["promoted"] and first["version"] == "1"
    # the same night: reembed-text replaces every text vector by the promoted tower's, before the
    # training data is built; the featurizer that builds it reads exactly those vectors
    v_before = lake.version("gold.product_embeddings")
    frozen_vecs = lake.read_pandas("gold.product_embeddings", columns=["product_id", "vector"])
    re1 = text_tune.reembed(RunContext.create(cfg, D1))
    name = registry.text_tower_registered_name(cfg)
    assert re1["reembedded"] and re1["text_model"].endswith(f"@{name}/v1")
    stored = lake.read_pandas("gold.product_embeddings", columns=["product_id", "model_version"])
    assert set(stored["model_version"]) == {f"{name}/v1"} != {frozen_version} and stored["product_id"].is_unique
    tuned_vecs = lake.read_pandas("gold.product_embeddings", columns=["product_id", "vector"])
    assert len(tuned_vecs) == len(frozen_vecs) and lake.version("gold.product_embeddings") == v_before + 1
    fz = PairFeaturizer.from_lake(lake, cfg, as_of=D1)
    pid = str(tuned_vecs["product_id"].iloc[0])
    got = fz.p_text[fz.pos[pid]]
    want = np.asarray(tuned_vecs["vector"].iloc[0], np.float32)
    old = np.asarray(frozen_vecs.set_index("product_id").loc[pid, "vector"], np.float32)
    assert np.allclose(got, want / np.linalg.norm(want), atol=1e-5) and not np.allclose(want, old, atol=1e-3)
    again_re = text_tune.reembed(RunContext.create(cfg, D1))  # a re-run is a no-op: nothing encoded or written
    assert again_re["encoded"] == 0 and not again_re["reembedded"]
    assert lake.version("gold.product_embeddings") == v_before + 1
    assert 0 < first["n_examples"] <= 48 and first["n_eval_queries"] > 0
    assert np.isfinite(first["frozen_ndcg_at_10"]) and np.isfinite(first["tuned_ndcg_at_10"])
    again = text_tune.run(RunContext.create(cfg, D1))
    assert not again["trained"] and again["version"] == "1" and again["promoted"]
    assert again["input_fingerprint"] == first["input_fingerprint"]
    assert [str(v.version) for v in client(cfg).search_model_versions(f"name = '{name}'")] == ["1"]
    spec = models.text_spec(cfg)
    frozen = models.text_spec(cfg, tuned=False)
    assert spec.name == frozen.name and spec.version == f"{name}/v1" and spec.source != frozen.source
    # a model that loses is registered but not promoted: the embed stage keeps the frozen encoder
    strict = make_config({**SMALL, "text_tune.min_gain": 1.0, "text_tune.max_pairs": 16,
                          "text_tune.max_eval_queries": 8,
                          "lake.root": cfg.lake.root, "mlflow.model_name": "other"})
    lost = text_tune.run(RunContext.create(strict, D1))
    assert lost["trained"] and not lost["promoted"] and registry.text_tower_version(strict) is None
    assert models.text_spec(strict).version == frozen.version
