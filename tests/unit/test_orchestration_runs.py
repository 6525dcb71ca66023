"""Run resolution, failure text and the CLI stage runner (mmpipeline.orchestration), as plain modules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from mmpipeline.orchestration.failures import failure_paragraph
from mmpipeline.orchestration.runner import run_cli_stage
from mmpipeline.orchestration.runs import REPO_ROOT, brings_news, resolve_run_args, stage_argv

CFG = "configs/homedepot.yaml"


def test_defaults_take_the_logical_date_and_the_default_config():
    r = resolve_run_args({}, logical_date=dt.datetime(2026, 3, 4, 1, 0, tzinfo=dt.timezone.utc),
                         default_config=CFG)
    assert r["config"] == str(REPO_ROOT / CFG) and r["run_date"] == "2026-03-04"
    assert r["argv"] == ["--config", str(REPO_ROOT / CFG), "--run-date", "2026-03-04"]
    assert r["full_refresh"] is False and r["model_alias"] is None
    assert r["force"] is False and r["allow_empty_source"] is False
    assert stage_argv(r, "publish") == r["argv"] and stage_argv(r, "clean") == r["argv"]


def test_params_win_and_become_cli_flags():
    r = resolve_run_args({"config": "configs/fashion.yaml", "run_date": "2026-01-02", "full_refresh": True,
                          "model_alias": "challenger", "overrides": ["embed.batch_size=64"]},
                         logical_date=dt.datetime(2026, 3, 4, tzinfo=dt.timezone.utc),
                         upstream=[{"config": CFG, "run_date": "2025-12-31"}], variable_config=CFG)
    assert r["argv"] == ["--config", str(REPO_ROOT / "configs/fashion.yaml"), "--run-date", "2026-01-02",
                         "--full-refresh", "--model-alias", "challenger", "--set", "embed.batch_size=64"]
    assert r["cli"].startswith("mmpipeline run STAGE --config ")


def test_force_and_allow_empty_source_reach_only_the_stages_that_take_them():
    r = resolve_run_args({"run_date": "2026-01-02", "force": True, "allow_empty_source": True}, default_config=CFG)
    base = ["--config", str(REPO_ROOT / CFG), "--run-date", "2026-01-02"]
    assert r["argv"] == base  # score, embed, ... get no stage options they would not understand
    assert stage_argv(r, "publish") == base + ["--param", "force=true"]
    assert stage_argv(r, "clean") == base + ["--allow-empty-source"]
    assert stage_argv(r, "score") == base


def test_the_extra_flags_are_accepted_by_the_cli():
    """The flags resolve_run adds parse in `mmpipeline run` (the parser, not a stage run)."""
    import argparse

    from mmpipeline import cli

    seen = {}

    def fake_run_stage(stage, config, run_date, full_refresh, model_alias, overrides, options):
        seen.update(stage=stage, overrides=overrides, options=options)
        return {}

    r = resolve_run_args({"force": True, "allow_empty_source": True, "run_date": "2026-01-02"}, default_config=CFG)
    orig = cli.run_stage
    cli.run_stage = fake_run_stage
    try:
        assert cli.main(["run", "publish", *stage_argv(r, "publish")]) == 0
        assert seen["options"] == {"force": True}
        assert cli.main(["run", "clean", *stage_argv(r, "clean")]) == 0
        assert "clean.allow_empty_source=true" in seen["overrides"]
    finally:
        cli.run_stage = orig
    assert isinstance(argparse, object)


def test_asset_triggered_runs_follow_the_upstream_run_then_variable_then_run_after():
    up = [{"config": "configs/sample.yaml", "run_date": "2026-05-01"}, {"dag_id": "x"}]
    r = resolve_run_args({}, logical_date=None, run_after=dt.datetime(2026, 5, 2, 5, 0), upstream=up,
                         variable_config=CFG)
    assert r["config"].endswith("configs/sample.yaml") and r["run_date"] == "2026-05-01"
    r = resolve_run_args({}, logical_date=None, run_after=dt.datetime(2026, 5, 2, 5, 0), variable_config=CFG)
    assert r["config"].endswith(CFG) and r["run_date"] == "2026-05-02"
    r = resolve_run_args({}, today=dt.date(2026, 6, 1), default_config=CFG)
    assert r["run_date"] == "2026-06-01"


def test_bad_inputs_fail_with_a_readable_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        resolve_run_args({"config": str(tmp_path / "nope.yaml")})
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        resolve_run_args({"run_date": "yesterday"}, default_config=CFG)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        resolve_run_args({"overrides": ["embed.batch_size"]}, default_config=CFG)


def test_evaluation_that_kept_the_champion_brings_no_news():
    assert brings_news({"config": CFG})
    assert brings_news({"summary": {"promoted": True}})
    assert not brings_news({"summary": {"promoted": False}})


def test_failure_paragraph_is_one_actionable_paragraph():
    resolved = resolve_run_args({"run_date": "2026-01-02"}, default_config=CFG)
    p = failure_paragraph(dag_id="mm_catalog_daily", task_id="clean", run_id="manual__1", try_number=3,
                          max_tries=3, error=RuntimeError("rows lost in silver.products\n  in 10 != 9"),
                          resolved=resolved, will_retry=False, downstream=["embed", "validate"],
                          log_url="http://x/log")
    assert "\n" not in p
    assert "mm_catalog_daily.clean failed on attempt 3 of 3" in p and "run date 2026-01-02" in p
    assert "rows lost in silver.products in 10 != 9" in p
    assert "(embed, validate) will not run" in p
    assert f"mmpipeline run clean --config {REPO_ROOT / CFG} --run-date 2026-01-02" in p
    p = failure_paragraph(dag_id="d", task_id="t", run_id="r", try_number=1, max_tries=3, error="boom",
                          resolved=None, will_retry=True)
    assert "will retry" in p and "run parameters unresolved" in p


def test_failure_paragraph_names_the_stage_behind_a_renamed_task_with_its_own_flags():
    resolved = resolve_run_args({"run_date": "2026-01-02", "force": True}, default_config=CFG)
    p = failure_paragraph(dag_id="mm_ranker_weekly", task_id="evaluate_and_promote", run_id="r", try_number=1,
                          max_tries=1, error="x", resolved=resolved, will_retry=False)
    assert "mmpipeline run evaluate --config" in p
    p = failure_paragraph(dag_id="mm_scoring_nightly", task_id="publish", run_id="r", try_number=1,
                          max_tries=1, error="x", resolved=resolved, will_retry=False)
    assert p.rstrip(".").endswith("--param force=true")


def test_cli_stage_failure_carries_the_output_tail():
    with pytest.raises(RuntimeError, match="(?s)exited with code 2.*invalid choice"):
        run_cli_stage("no-such-stage", ["--config", str(Path(REPO_ROOT) / CFG)])



def test_the_stage_runner_reports_its_wall_time_even_when_a_stage_reports_its_own_steps(tmp_path, monkeypatch,
                                                                                        caplog):
    """A stage's own per-step timings ("seconds": {...}) once replaced the runner's wall seconds, and the
    runner's "done in %.1fs" line then printed a logging traceback instead of the time."""
    import logging

    import yaml

    from mmpipeline import cli

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "lake": {"root": str(tmp_path / "lake")},
                                   "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    monkeypatch.setattr(cli, "_load", lambda spec: lambda ctx: {"transcribed": 0, "seconds": {"asr": 1.0}})
    with caplog.at_level(logging.INFO, logger="mmpipeline"):
        s = cli.run_stage("transcribe", str(cfg), "2026-03-01")
    assert isinstance(s["seconds"], float) and s["transcribed"] == 0
    assert any(r.getMessage().startswith("stage transcribe: done in ") for r in caplog.records)
