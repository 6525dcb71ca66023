"""The embed and score stages on a real multi-process Spark cluster (``make cluster-test``).

A standalone master and two workers (1 core, 1 GB each) are started on 127.0.0.1 from the pyspark
install (:mod:`mmpipeline.cluster`); ``jobs/embed.py`` (``embed.engine: spark``) and
``jobs/score.py`` (``score.engine: spark``) run through ``spark-submit --master spark://...``, so the
executors live in their own JVMs and Python workers and share nothing with the driver's memory.
The tables they write must equal those of an in-process local run on an identical lake. The
cluster is always stopped, also when the test fails.

The catalog is the score tests' tiny one (tests/integration/test_score_pipeline.py: 80 products,
20 queries, a tiny registered pyfunc ranker); embed adds real all-MiniLM-L6-v2 text vectors.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmpipeline.context import RunContext

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN_DATE = dt.date(2026, 11, 1)

SETTINGS = {"score.head_queries": 12, "score.candidates_k": 15, "score.output_k": 12,
            "score.min_results_per_query": 10, "score.batch_size": 100,
            "rank.text_model_name": "tiny-text", "rank.image_model_name": "tiny-image",
            "mlflow.model_name": "test-ranker", "embed.embed_images": False, "embed.progress": False,
            "embed.batch_size": 32, "embed.max_text_length": 64, "embed.spark_partitions": 2}


def _nested(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        *path, last = k.split(".")
        d = out
        for p in path:
            d = d.setdefault(p, {})
        d[last] = v
    return out


def _tables(lake) -> dict[str, pd.DataFrame]:
    keys = {"gold.product_embeddings": ["product_id", "modality", "model_name"],
            "gold.query_embeddings": ["query_id", "modality", "model_name"],
            "gold.search_ranking": ["query_id", "rank"], "gold.product_vectors": ["product_id"]}
    return {t: lake.read_pandas(t).sort_values(k).reset_index(drop=True) for t, k in keys.items()}


def _assert_same(a: pd.DataFrame, b: pd.DataFrame, name: str) -> None:
    skip = {"embedded_at", "scored_at", "created_at", "updated_at", "computed_at"}
    vec = [c for c in a.columns if a[c].map(lambda x: isinstance(x, (list, np.ndarray))).any()]
    num = [c for c in a.columns if c not in vec and pd.api.types.is_float_dtype(a[c])]
    exact = [c for c in a.columns if c not in skip and c not in vec and c not in num and "run_id" not in c]
    pd.testing.assert_frame_equal(a[exact], b[exact], obj=name)
    for c in num:
        np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}.{c}")
    for c in vec:
        for x, y in zip(a[c], b[c]):
            if x is None or y is None:
                assert x is None and y is None, f"{name}.{c}"
            else:
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), atol=1e-4, err_msg=f"{name}.{c}")


def test_embed_and_score_on_a_standalone_cluster_equal_a_local_run(make_config, tmp_path):
    from test_score_pipeline import build_lake, register_models, set_alias

    from mmpipeline.cluster import run_submit, standalone_cluster, submit_command
    from mmpipeline.embed import job as embed_job
    from mmpipeline.score import job as score_job

    local = make_config({**SETTINGS, "lake.root": str(tmp_path / "local" / "lake")})
    remote_settings = {**SETTINGS, "lake.root": str(tmp_path / "cluster" / "lake"), "embed.engine": "spark",
                       "score.engine": "spark", "mlflow.tracking_uri": local.mlflow.tracking_uri,
                       "mlflow.artifact_root": local.mlflow.artifact_root}
    remote = make_config(remote_settings)
    for cfg in (local, remote):
        build_lake(RunContext.create(cfg, RUN_DATE).lake)
    set_alias(local, register_models(local)["good"])

    # the reference: both stages in this process on the local engines
    embed_job.run(RunContext.create(local, RUN_DATE))
    score_job.run(RunContext.create(local, RUN_DATE))

    cfg_file = tmp_path / "cluster.yaml"
    cfg_file.write_text(yaml.safe_dump(_nested(remote_settings)))
    with standalone_cluster(workers=2, cores=1, memory="1g", work_dir=tmp_path / "spark") as cluster:
        for stage in ("embed", "score"):
            log = tmp_path / f"{stage}.log"
            r = run_submit(submit_command(cluster.master_url, REPO / "jobs" / f"{stage}.py",
                                          ["--config", str(cfg_file), "--run-date", str(RUN_DATE)]),
                           log_path=log, timeout=600)
            tail = "\n".join(log.read_text().splitlines()[-40:])
            assert r.returncode == 0, f"{stage} on the cluster failed:\n{tail}"
        apps = cluster.state().get("completedapps", []) + cluster.state().get("activeapps", [])
        assert len(apps) == 2  # both stages ran as applications of the standalone master (not local mode)

    a, b = _tables(RunContext.create(local, RUN_DATE).lake), _tables(RunContext.create(remote, RUN_DATE).lake)
    assert (a["gold.product_embeddings"]["model_name"] == "all-MiniLM-L6-v2").sum() == 80
    for name in a:
        _assert_same(a[name], b[name], name)
