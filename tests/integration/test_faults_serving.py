"""Fault and re-run tests of the serving side (train -> evaluate -> score -> publish) on the real
engines, on configs/sample.yaml's generated catalog (small).

One lake is built once for the module (sample data -> ingest -> clean -> embed (text) ->
build-training-data); the tests then run the serving chain on it, in order:

1. the chain twice for one date: every table (volatile columns aside) and the registry (version
   numbers, aliases) are the same after the second run;
2. the next date; then an earlier date after the later one (refused unless forced; rollback works);
3. a publish killed with SIGKILL between the index commit and its log entry: the next start
   reconciles, ``index-status`` and ``search`` name what is served, a re-run is a no-op;
4. a failed publish (a sentinel-score ranking) leaves the previous version served.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmpipeline.context import RunContext, StageError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
D1, D2, D3, D4 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3), dt.date(2026, 11, 4)
# columns that legitimately differ between two runs with the same result (clocks, timings, MLflow ids
# of runs that only log), and the Delta version a stage's commit got
VOLATILE = {"event_at", "validated_at", "scored_at", "decided_at", "evaluated_at", "started_at", "finished_at",
            "embedded_at", "ingested_at", "_ingested_at", "stage_seconds", "seconds", "pairs_per_second",
            "ranking_version", "summary", "duration_s", "validation_seconds"}
SERVING_CHAIN = ("train", "evaluate", "score", "publish")


def _overrides(tmp: Path) -> dict:
    return {
        "lake.root": str(tmp / "lake"), "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "mlflow.artifact_root": str(tmp / "mlartifacts"), "spark.master": "local[2]",
        "embed.embed_images": False, "embed.progress": False, "embed.num_workers": 0, "embed.batch_size": 64,
        "embed.max_text_length": 64,
        "rank.epochs": 3, "rank.hidden_dim": 16, "rank.device": "cpu", "rank.negatives_random": 4,
        "rank.negatives_hard": 4, "rank.hard_pool_k": 10, "rank.candidates_k": 20, "rank.recall_k": 20,
        "rank.max_eval_queries": 30,
        "score.head_queries": 25, "score.candidates_k": 20, "score.output_k": 12, "score.min_results_per_query": 5,
        "quality.data_docs": False,  # no Data Docs site for the publish gate runs (test_validate_stage.py covers it)
    }


def _config(tmp: Path):
    from mmpipeline.config import load_config

    return load_config(REPO / "configs" / "sample.yaml", _overrides(tmp), env={"MMP_SAMPLE_DATA": str(tmp / "data")})


def _stage(cfg, stage: str, run_date: dt.date, **kw):
    from mmpipeline.cli import STAGES, _load

    return _load(STAGES[stage])(RunContext.create(cfg, run_date, **kw)) or {}


def _snapshot(lake) -> dict[str, pd.DataFrame]:
    """Every table under the lake, volatile columns dropped, rows sorted."""
    out = {}
    root = Path(lake.root)
    for log_dir in sorted(root.glob("*/*/_delta_log")):
        name = f"{log_dir.parent.parent.name}.{log_dir.parent.name}"
        df = lake.read_pandas(name)
        df = df.drop(columns=[c for c in df.columns if c in VOLATILE])
        df = df.astype({c: str for c in df.columns})
        out[name] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def _registry(cfg) -> dict:
    from mmpipeline.rank.registry import client

    c = client(cfg)
    name = cfg.mlflow.model_name
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
    aliases = dict(c.get_registered_model(name).aliases)
    return {"versions": versions, "aliases": {k: str(v) for k, v in aliases.items()}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, spark):
    from mmpipeline.sources.sample import write_sample_data

    tmp = tmp_path_factory.mktemp("faults")
    write_sample_data(tmp / "data", n_products=60, seed=3)
    cfg = _config(tmp)
    for stage in ("ingest", "clean", "embed", "build-training-data"):
        _stage(cfg, stage, D1)
    return tmp, cfg


def _served(lake) -> pd.DataFrame:
    return lake.read_pandas("gold.search_index").sort_values(["query_id", "rank"]).reset_index(drop=True)


def test_serving_chain_twice_for_one_date_is_a_no_op(world):
    from mmpipeline.score import index

    tmp, cfg = world
    first = {s: _stage(cfg, s, D1) for s in SERVING_CHAIN}
    assert first["evaluate"]["promoted"] and first["publish"]["published"]
    lake = RunContext.create(cfg, D1).lake
    before, reg_before = _snapshot(lake), _registry(cfg)
    index_v = lake.version("gold.search_index")
    second = {s: _stage(cfg, s, D1) for s in SERVING_CHAIN}
    assert second["train"]["reused"] and second["train"]["version"] == first["train"]["version"]
    assert second["evaluate"]["promoted"] and second["evaluate"]["reasons"] == first["evaluate"]["reasons"]
    assert second["publish"]["already_current"]
    after, reg_after = _snapshot(lake), _registry(cfg)
    assert reg_after == reg_before
    assert reg_after["aliases"] == {"challenger": first["train"]["version"], "champion": first["train"]["version"]}
    assert lake.version("gold.search_index") == index_v
    assert before.keys() == after.keys()
    for t in before:
        pd.testing.assert_frame_equal(before[t], after[t], obj=t)
    assert index.current_event(lake)["index_version"] == first["publish"]["index_version"]


def test_next_date_then_an_earlier_date_is_refused_unless_forced(world):
    from mmpipeline.score import index

    tmp, cfg = world
    lake = RunContext.create(cfg, D1).lake
    champion_before = _registry(cfg)["aliases"]["champion"]
    t2 = _stage(cfg, "train", D2)
    e2 = _stage(cfg, "evaluate", D2)
    assert t2["version"] != champion_before and e2["challenger_version"] == t2["version"]
    if not e2["promoted"]:  # the same training rows and seed: a tie or a loss never promotes
        assert _registry(cfg)["aliases"]["champion"] == champion_before
    _stage(cfg, "score", D2)
    p2 = _stage(cfg, "publish", D2)
    assert p2["published"] and not p2.get("already_current")
    assert set(pd.to_datetime(_served(lake)["run_date"]).dt.date) == {D2}

    # D1 after D2: refused with one clear line, the served index untouched
    v = lake.version("gold.search_index")
    _stage(cfg, "score", D1)
    with pytest.raises(StageError, match=r"run 2026-11-01 is older than the served index \(run 2026-11-02.*force=true"):
        _stage(cfg, "publish", D1)
    assert lake.version("gold.search_index") == v
    forced = _stage(cfg, "publish", D1, options={"force": True})
    assert forced["forced"] and set(pd.to_datetime(_served(lake)["run_date"]).dt.date) == {D1}
    # rollback keeps working: back to D2
    assert index.rollback(cfg, run_date=D2)["run_date"] == str(D2)
    assert set(pd.to_datetime(_served(lake)["run_date"]).dt.date) == {D2}
    assert index.index_status(cfg)["current"]["run_date"] == str(D2)


KILL_SCRIPT = textwrap.dedent("""
    import datetime as dt, json, os, signal, sys
    from mmpipeline.config import load_config
    from mmpipeline.context import RunContext
    from mmpipeline.score import publish

    args = json.loads(sys.argv[1])
    cfg = load_config(args["config"], args["overrides"], env={"MMP_SAMPLE_DATA": args["data"]})
    real = publish.append_event

    def append_then_die(lake, **row):
        if row.get("action") == "publish" and row.get("status") == "current":
            os.kill(os.getpid(), signal.SIGKILL)  # after the index commit, before its log entry
        return real(lake, **row)

    publish.append_event = append_then_die
    publish.run(RunContext.create(cfg, dt.date.fromisoformat(args["run_date"])))
    print("not killed")
""")


def test_publish_killed_between_index_commit_and_log_heals_on_next_start(world, capsys):
    from mmpipeline.score import index, search

    tmp, cfg = world
    lake = RunContext.create(cfg, D1).lake
    _stage(cfg, "score", D3)
    cur_before = index.current_event(lake)
    index_v = lake.version("gold.search_index")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable}
    arg = json.dumps({"config": str(REPO / "configs" / "sample.yaml"), "overrides": _overrides(tmp),
                      "data": str(tmp / "data"), "run_date": str(D3)})
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, arg], env=env, capture_output=True, text=True,
                          timeout=900, cwd=str(REPO))
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-4000:]
    # the state the kill left: the index holds D3, the log still names the previous run
    assert lake.version("gold.search_index") == index_v + 1
    assert set(pd.to_datetime(_served(lake)["run_date"]).dt.date) == {D3}
    raw = index.current_event(lake)
    assert raw["index_version"] == cur_before["index_version"]
    ev = lake.read_pandas("ops.index_versions")
    assert (ev["status"] == "pending").sum() >= 1

    # index-status reconciles first: it names what is served
    status = index.index_status(cfg)
    assert status["current"] == {"run_date": str(D3), "index_version": index_v + 1,
                                 "model_version": status["current"]["model_version"]}
    capsys.readouterr()
    res = search.search(cfg, _a_served_query(lake), k=3)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the title line
    assert res["run_date"] == str(D3) and f"index version {index_v + 1}" in out
    # reconcile is idempotent and a re-run of the publish is a no-op
    assert index.reconcile(lake) is None
    again = _stage(cfg, "publish", D3)
    assert again["already_current"] and lake.version("gold.search_index") == index_v + 1
    # rollback still works after a healed publish
    assert index.rollback(cfg, run_date=D2)["run_date"] == str(D2)
    assert set(pd.to_datetime(_served(lake)["run_date"]).dt.date) == {D2}


def _a_served_query(lake) -> str:
    return str(lake.read_pandas("gold.search_index", columns=["query"])["query"].iloc[0])


def test_a_failed_publish_leaves_the_previous_version_served(world):
    from mmpipeline.score import index, search

    tmp, cfg = world
    lake = RunContext.create(cfg, D1).lake
    served = _served(lake)
    cur = index.current_event(lake)
    _stage(cfg, "score", D4)
    r = lake.read_pandas("gold.search_ranking", filters=[("run_date", "=", D4)])
    r["score"] = np.where(r["rank"] > 3, -1e30, r["score"])
    lake.write("gold.search_ranking", r, mode="overwrite", partition={"run_date": D4})
    with pytest.raises(StageError, match="scores_not_sentinel"):
        _stage(cfg, "publish", D4)
    pd.testing.assert_frame_equal(_served(lake), served)
    assert index.current_event(lake)["index_version"] == cur["index_version"]
    res = search.search(cfg, _a_served_query(lake), k=3)
    assert res["run_date"] == str(pd.Timestamp(cur["run_date"]).date())


def test_a_relisted_duplicate_is_collapsed_at_score_and_expanded_by_search(world):
    """Two products with the same title and photo (a re-listing): the served top 10 shows one, the
    other is recorded behind it in gold.search_duplicates, the publish gate passes, search expands it."""
    from mmpipeline.score import search
    from mmpipeline.score.dedupe import title_key

    tmp, cfg = world
    lake = RunContext.create(cfg, D1).lake
    served = _served(lake)
    qid = str(served["query_id"].iloc[0])
    top = served[served["query_id"] == qid].sort_values("rank")
    shown, twin = str(top["product_id"].iloc[0]), str(top["product_id"].iloc[1])
    import pyarrow as pa

    from mmpipeline.schemas import arrow_schema, table

    prods = lake.read_pandas("silver.products", columns=["product_id", "title", "image_hash"])
    src = prods[prods["product_id"] == shown].iloc[0]
    prods.loc[prods["product_id"] == twin, ["title", "image_hash"]] = [src["title"], src["image_hash"]]
    row = lake.read_arrow("silver.products", filters=[("product_id", "=", twin)]).to_pylist()
    row[0].update(title=src["title"], image_hash=src["image_hash"])
    lake.merge("silver.products", pa.Table.from_pylist(row, schema=arrow_schema(table("silver.products"))))
    _stage(cfg, "score", D4)
    pub = _stage(cfg, "publish", D4, options={"force": True})
    assert pub["published"]
    ranking = lake.read_pandas("gold.search_ranking", filters=[("run_date", "=", D4)])
    titles = dict(zip(prods["product_id"], prods["title"].map(title_key)))
    images = dict(zip(prods["product_id"], prods["image_hash"]))
    for _, g in ranking[ranking["rank"] <= 10].groupby("query_id"):
        keys = [(titles[p], images[p]) for p in g["product_id"]]
        assert len(keys) == len(set(keys)), g
    r = ranking[ranking["query_id"] == qid]
    assert not ({shown, twin} <= set(r["product_id"]))  # never both
    dups = lake.read_pandas("gold.search_duplicates", filters=[("run_date", "=", D4)])
    # the planted pair is one group with one hidden member (the sample catalog may hold other duplicates)
    hidden = dups[(dups["query_id"] == qid) & dups["product_id"].isin([shown, twin])]
    assert len(hidden) == 1 and {hidden["product_id"].iloc[0], hidden["shown_product_id"].iloc[0]} == {shown, twin}
    checks = lake.read_pandas("ops.validation", filters=[("run_date", "=", D4)])
    assert checks.loc[checks["check_name"] == "no_duplicate_listings", "success"].tolist() == [True]
    res = search.search(cfg, str(r["query"].iloc[0]), k=10)
    expanded = {x["product_id"]: x["duplicates"] for x in res["results"]}
    assert hidden["product_id"].iloc[0] in expanded[hidden["shown_product_id"].iloc[0]]
