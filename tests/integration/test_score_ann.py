"""The score stage's dense index as a nightly artifact: built once, saved beside the lake, recorded,
reused by a re-run of the date (same index, same tables), and the same candidates as exact search."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from mmpipeline.context import RunContext

D1 = dt.date(2026, 11, 1)


@pytest.fixture()
def env(make_config):
    from tests.integration.test_score_pipeline import build_lake, register_models, set_alias

    base = {"score.head_queries": 12, "score.candidates_k": 15, "score.output_k": 12, "score.batch_size": 100,
            "rank.text_model_name": "tiny-text", "rank.image_model_name": "tiny-image",
            "mlflow.model_name": "test-ranker-ann"}
    cfg = make_config({**base, "score.ann.kind": "hnsw", "score.ann.tune_k": 15})
    build_lake(RunContext.create(cfg, D1).lake)
    versions = register_models(cfg)
    set_alias(cfg, versions["good"])
    return cfg, make_config({**base, "score.ann.kind": "exact", "lake.root": cfg.lake.root + "-exact"})


@pytest.mark.slow
def test_score_saves_reuses_and_records_the_ann_index(env):
    from mmpipeline.score import job

    cfg, cfg_exact = env
    lake = RunContext.create(cfg, D1).lake
    job.run(RunContext.create(cfg, D1))
    ops = lake.read_pandas("ops.retrieval_indexes")
    assert sorted(ops["modality"]) == ["bm25", "image", "text"]
    assert dict(zip(ops["modality"], ops["kind"])) == {"bm25": "bm25", "image": "hnsw", "text": "hnsw"}
    assert not ops["reused"].any() and (ops.loc[ops["kind"] == "hnsw", "recall"] >= 0.95).all()
    paths = dict(zip(ops["modality"], ops["path"]))
    assert all(p.startswith(str(Path(cfg.lake.root) / "_artifacts")) for p in paths.values())
    assert (Path(paths["text"]) / "index.faiss").is_file() and (Path(paths["bm25"]) / "ids.json").is_file()
    r1 = lake.read_pandas("gold.search_ranking")

    v_ops = lake.version("ops.retrieval_indexes")
    job.run(RunContext.create(cfg, D1))  # re-run of the date: the saved index is loaded, tables identical
    ops2 = lake.read_pandas("ops.retrieval_indexes")
    assert lake.version("ops.retrieval_indexes") == v_ops  # nothing new recorded for the same indexes
    assert len(ops2) == 3 and dict(zip(ops2["modality"], ops2["path"])) == paths
    key = ["query_id", "rank"]
    pd.testing.assert_frame_equal(r1.sort_values(key).reset_index(drop=True),
                                  lake.read_pandas("gold.search_ranking").sort_values(key).reset_index(drop=True))

    # exact search on the same inputs publishes the same candidates (tiny catalog: the HNSW is exact here)
    from tests.integration.test_score_pipeline import build_lake

    lake_x = RunContext.create(cfg_exact, D1).lake
    build_lake(lake_x)
    job.run(RunContext.create(cfg_exact, D1))
    rx = lake_x.read_pandas("gold.search_ranking")
    cols = ["query_id", "rank", "product_id", "candidate_source"]
    pd.testing.assert_frame_equal(r1.sort_values(key).reset_index(drop=True)[cols],
                                  rx.sort_values(key).reset_index(drop=True)[cols])
    assert sorted(lake_x.read_pandas("ops.retrieval_indexes")["kind"]) == ["bm25", "exact", "exact"]
