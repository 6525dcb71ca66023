"""Input gates: a scoring run for a run date already published from the same inputs skips; the ranker
skips when nothing changed since the last trained model; any change to an input table, the champion
version or the DAG's settings makes the run go ahead (real Delta tables, written with delta-rs)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from mmpipeline.config import load_config
from mmpipeline.lake import Lake
from mmpipeline.orchestration import gates

RANKER, SCORING = "mm_ranker_weekly", "mm_scoring_nightly"
CFG = "configs/sample.yaml"


@pytest.fixture()
def lake_cfg(tmp_path):
    """A config whose lake is a temporary folder, with the silver and gold inputs of both DAGs."""
    root = tmp_path / "lake"
    cfg = load_config(CFG, [f"lake.root={root}"])
    lake = Lake(root, engine="delta-rs")
    for name in ("silver.products", "silver.queries", "silver.judgments", "gold.product_embeddings",
                 "gold.query_embeddings", "gold.voice_transcripts", "gold.voice_features"):
        write_deltalake(lake.uri(name), pa.table({"id": ["a", "b"], "v": [1, 2]}))
    return cfg, lake


def _resolved(cfg, run_date: str, **kw):
    return {"config": str(cfg.config_path), "run_date": run_date, "overrides": [f"lake.root={cfg.lake.root}"], **kw}


def test_table_fingerprint_follows_the_snapshot_not_the_version(lake_cfg):
    _, lake = lake_cfg
    uri = lake.uri("silver.judgments")
    fp = gates.table_fingerprint(uri)
    assert fp == gates.table_fingerprint(uri)  # reading does not change it
    # a snapshot merge of the same rows (clean/embed on a night without changes) keeps it
    from deltalake import DeltaTable

    (DeltaTable(uri).merge(pa.table({"id": ["a", "b"], "v": [1, 2]}), predicate="t.id = s.id", source_alias="s",
                           target_alias="t").when_matched_update_all(predicate="t.v IS DISTINCT FROM s.v")
     .when_not_matched_insert_all().when_not_matched_by_source_delete().execute())
    assert gates.table_fingerprint(uri) == fp
    write_deltalake(uri, pa.table({"id": ["c"], "v": [3]}), mode="append")
    assert gates.table_fingerprint(uri) != fp
    assert gates.table_fingerprint(lake.uri("silver.nothing_here")) == "absent"


def test_scoring_runs_once_per_run_date_unless_an_input_changes(lake_cfg):
    """The nightly story: the asset-triggered run scores D and records; the 05:00 fallback for D skips;
    a new champion version or new embeddings make D run again; the next night runs."""
    cfg, lake = lake_cfg
    champion = {"v": "3"}
    version = lambda _cfg, alias: champion["v"] if alias == "champion" else None  # noqa: E731

    first = gates.check(_resolved(cfg, "2026-11-20"), SCORING, model_version=version)
    assert first["run"] and "no earlier successful run" in first["reason"]
    assert first["components"]["model@champion"] == "3"
    assert set(first["components"]) >= {"silver.products", "gold.product_embeddings", "gold.voice_transcripts",
                                         "config.score"}
    gates.record(first, SCORING, "2026-11-20", "asset_triggered__1")
    state = json.loads(gates.state_path(cfg.lake.root, SCORING).read_text())
    assert state["run_date"] == "2026-11-20" and state["fingerprint"] == first["fingerprint"]

    cron = gates.check(_resolved(cfg, "2026-11-20"), SCORING, model_version=version)
    assert not cron["run"]
    assert "already scored and published" in cron["reason"] and "\n" not in cron["reason"]
    assert gates.check(_resolved(cfg, "2026-11-20", force=True), SCORING, model_version=version)["run"]

    champion["v"] = "4"  # the ranker DAG promoted a new champion
    promoted = gates.check(_resolved(cfg, "2026-11-20"), SCORING, model_version=version)
    assert promoted["run"] and "model@champion" in promoted["reason"]
    champion["v"] = "3"
    write_deltalake(lake.uri("gold.product_embeddings"), pa.table({"id": ["z"], "v": [9]}), mode="append")
    fresh = gates.check(_resolved(cfg, "2026-11-20"), SCORING, model_version=version)
    assert fresh["run"] and "gold.product_embeddings" in fresh["reason"]

    assert gates.check(_resolved(cfg, "2026-11-21"), SCORING, model_version=version)["run"]  # next night


def test_ranker_skips_when_nothing_changed_since_the_last_trained_model(lake_cfg):
    cfg, lake = lake_cfg
    first = gates.check(_resolved(cfg, "2026-11-15"), RANKER)
    assert first["run"]
    assert not any(k.startswith("model@") for k in first["components"])  # the ranker does not read a champion
    gates.record(first, RANKER, "2026-11-15", "scheduled__1")

    later = gates.check(_resolved(cfg, "2026-11-22"), RANKER)  # a week on, same inputs: another date is no reason
    assert not later["run"] and "nothing changed since the last trained model" in later["reason"]
    assert "run scheduled__1 for run date 2026-11-15" in later["reason"]
    assert gates.check(_resolved(cfg, "2026-11-22", full_refresh=True), RANKER)["run"]

    settings = gates.check({**_resolved(cfg, "2026-11-22"),
                            "overrides": [f"lake.root={cfg.lake.root}", "rank.epochs=7"]}, RANKER)
    assert settings["run"] and "config.rank" in settings["reason"]

    write_deltalake(lake.uri("silver.judgments"), pa.table({"id": ["c"], "v": [3]}), mode="append")
    new = gates.check(_resolved(cfg, "2026-11-22"), RANKER)
    assert new["run"] and new["reason"].endswith("silver.judgments")


def test_ranker_records_the_embeddings_its_own_reembed_wrote(lake_cfg):
    """reembed-text (a ranker stage) rewrites gold.product_embeddings after check_inputs: the recorded
    inputs are the table as the run left it (the next run skips), unless another writer came in between."""
    from deltalake import CommitProperties

    cfg, lake = lake_cfg
    uri = lake.uri("gold.product_embeddings")

    def write(stage: str, v: int) -> None:
        write_deltalake(uri, pa.table({"id": ["a", "b"], "v": [v, v]}), mode="overwrite",
                        commit_properties=CommitProperties(custom_metadata={"stage": stage}))

    first = gates.check(_resolved(cfg, "2026-11-15"), RANKER)
    write("reembed-text", 5)  # the same run re-embeds with the promoted text tower
    gates.record(first, RANKER, "2026-11-15", "run_1")
    again = gates.check(_resolved(cfg, "2026-11-15"), RANKER)
    assert not again["run"], again["reason"]

    second = gates.check(_resolved(cfg, "2026-11-22", force=True), RANKER)
    write("embed", 6)  # the catalog DAG's embed wrote meanwhile: that change is not this run's
    write("reembed-text", 7)
    gates.record(second, RANKER, "2026-11-22", "run_2")
    third = gates.check(_resolved(cfg, "2026-11-29"), RANKER)
    assert third["run"] and third["reason"].endswith("gold.product_embeddings")


def test_decide_is_pure_and_conservative():
    comps = {"silver.products": "x", "config.rank": "y"}
    state = {"components": comps, "run_date": "2026-01-01", "dag_run_id": "r"}
    assert not gates.decide(RANKER, comps, "2026-01-08", state).run
    assert gates.decide(RANKER, {**comps, "silver.interactions": "absent"}, "2026-01-08", state).run  # a new input
    assert gates.decide(RANKER, comps, "2026-01-08", None).run
    assert gates.decide(RANKER, comps, "2026-01-08", {"garbage": 1}).run
    assert not gates.decide(SCORING, comps, "2026-01-01", state).run
    assert gates.decide(SCORING, comps, "2026-01-02", state).run


def test_unreadable_state_means_run_and_writes_are_atomic(tmp_path):
    p = gates.write_state(tmp_path, RANKER, {"components": {}, "fingerprint": "f"})
    assert gates.read_state(tmp_path, RANKER)["fingerprint"] == "f"
    assert [q.name for q in p.parent.iterdir()] == [p.name]  # no temp file left behind
    p.write_text("{not json")
    assert gates.read_state(tmp_path, RANKER) is None

