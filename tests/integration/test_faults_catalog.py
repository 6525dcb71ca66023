"""Fault and re-run tests of the catalog stages (ingest -> clean -> validate) on the real engines:
re-runs and out-of-order dates, bad exports (empty, truncated, misread), accounting that can fail,
one-line errors, the per-stage lock, and kill -9 of clean at a few points.

Small on purpose: the generated sample catalog with 40 products (``mmpipeline sample-data``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmpipeline.cli import main, run_stage
from mmpipeline.context import StageError
from mmpipeline.lake import Lake
from mmpipeline.schemas import table

REPO = Path(__file__).resolve().parents[2]
D1, D2, D0 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 2, 28)
CATALOG = ["bronze.products", "bronze.queries", "bronze.judgments", "bronze.interactions", "silver.products",
           "silver.queries", "silver.judgments", "silver.interactions", "quarantine.products",
           "quarantine.judgments", "quarantine.interactions", "quarantine.queries", "quarantine.images"]
VOLATILE = {"_ingested_at", "recorded_at", "validated_at", "started_at", "finished_at", "seconds", "summary"}


def _sample_at(tmp_path: Path, data: Path | None = None):
    """(config path, data dir, lake) under ``tmp_path``: the sample config pointed at a 40-product
    generated catalog (written under ``tmp_path`` unless an existing ``data`` dir is given)."""
    from mmpipeline.sources.sample import write_sample_data

    if data is None:
        data = tmp_path / "data"
        write_sample_data(data, n_products=40, seed=3)
    text = (REPO / "configs" / "sample.yaml").read_text().replace("${MMP_SAMPLE_DATA:-../var/sample-data}", str(data))
    cfg = yaml.safe_load(text)
    cfg["lake"]["root"] = str(tmp_path / "lake")
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_root": str(tmp_path / "mla")}
    cfg["quality"] = {"data_docs": False}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p), data, Lake(tmp_path / "lake")


@pytest.fixture()
def sample(tmp_path):
    """(config path, data dir, lake): the sample config pointed at a 40-product generated catalog."""
    return _sample_at(tmp_path)


@pytest.fixture(scope="module")
def cleaned_d1(spark, tmp_path_factory):
    """A catalog ingested and cleaned for D1, built once per module (the prefix several tests share),
    and its contents. Tests take their own copy (:func:`_copy_of`), never this lake itself."""
    base = tmp_path_factory.mktemp("cleaned_d1")
    cfg, _, lake = _sample_at(base)
    _chain(cfg, D1, ("ingest", "clean"))
    return base, _contents(lake)


def _copy_of(base: Path, tmp_path: Path, own_data: bool = False):
    """(config path, data dir, lake): a copy of the prepared lake under ``base`` in ``tmp_path``.

    The source files and images stay those under ``base`` (read-only, so image paths in silver are
    those of the prepared run) unless ``own_data``: then the source files are copied too (for a test
    that rewrites them; the images are still shared)."""
    import shutil

    shutil.copytree(base / "lake", tmp_path / "lake")
    data = base / "data"
    if own_data:
        shutil.copytree(data, tmp_path / "data", ignore=shutil.ignore_patterns("images"))
        data = tmp_path / "data"
        (data / "images").symlink_to(base / "data" / "images", target_is_directory=True)
    return _sample_at(tmp_path, data=data)


def _chain(cfg: str, day: dt.date, stages=("ingest", "clean", "validate"), **kw):
    for s in stages:
        run_stage(s, cfg, str(day), **kw)


def _contents(lake: Lake, names=CATALOG) -> dict[str, pd.DataFrame]:
    out = {}
    for t in names:
        if lake.exists(t):
            df = lake.read_pandas(t)
            df = df[[c for c in df.columns if c not in VOLATILE]].astype(str)
            out[t] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for t in a:
        pd.testing.assert_frame_equal(a[t], b[t], obj=t)


def _assert_consistent(lake: Lake) -> None:
    """Every table opens at its latest version and has no duplicate keys."""
    for t in CATALOG + ["ops.stage_runs", "ops.row_accounting"]:
        if not lake.exists(t):
            continue
        df = lake.read_pandas(t)
        spec = table(t)
        keys = list(dict.fromkeys(spec.keys + spec.partition_by))  # events repeat across run dates
        if spec.keys and len(df):
            assert not df.duplicated(keys).any(), f"duplicate keys in {t}"


def _versions(lake: Lake) -> dict[str, int | None]:
    return {t: lake.version(t) for t in CATALOG}


def _stage_runs(lake: Lake) -> pd.DataFrame:
    return lake.read_pandas("ops.stage_runs")


# ------------------------------------------------------------------------------------- re-runs


def test_rerun_next_date_and_earlier_date(spark, cleaned_d1, tmp_path):
    """Issue 9.1: clean twice, then validate (string_view), the next date, and an earlier date after it."""
    base, _ = cleaned_d1
    cfg, _, lake = _copy_of(base, tmp_path)  # ingest + clean of D1 already ran (built once)
    _chain(cfg, D1, ("validate",))
    first = _contents(lake)
    _chain(cfg, D1)  # the same date again: a no-op on every table's contents
    _assert_same(first, _contents(lake))
    _chain(cfg, D2)  # failed with ArrowNotImplementedError (string, string_view) before the fix
    _chain(cfg, D0)  # an earlier date after a later one
    _assert_consistent(lake)
    silver = ["silver.products", "silver.queries", "silver.judgments"]
    drop_rd = lambda d: {t: df.drop(columns=["run_date"]) for t, df in d.items()}  # noqa: E731
    _assert_same(drop_rd(_contents(lake, silver)), drop_rd({t: first[t] for t in silver}))
    runs = _stage_runs(lake)
    assert set(runs["status"]) == {"success"} and len(runs) == 9
    acc = lake.read_pandas("ops.row_accounting", filters=[("stage", "=", "clean")])
    assert set(acc["run_date"]) == {D0, D1, D2} and acc["balanced"].all()


# ---------------------------------------------------------------------------------- bad exports


def _rewrite_products(data: Path, keep) -> int:
    text = (data / "products.csv").read_text()
    header, *rows = text.splitlines(keepends=True)
    kept = keep(rows)
    (data / "products.csv").write_text(header + "".join(kept))
    return len(kept)


def test_empty_truncated_and_swallowed_exports_are_refused_and_write_nothing(spark, cleaned_d1, tmp_path):
    base, _ = cleaned_d1
    cfg, data, lake = _copy_of(base, tmp_path, own_data=True)  # ingested + cleaned for D1 (built once)
    good = _contents(lake, ["silver.products", "silver.judgments", "silver.queries"])
    original = (data / "products.csv").read_text()

    # header-only products file: refused (it would delete the catalog), nothing written
    _rewrite_products(data, lambda rows: [])
    run_stage("ingest", cfg, str(D2))
    before = _versions(lake)
    with pytest.raises(StageError, match="has no records.*--allow-empty-source"):
        run_stage("clean", cfg, str(D2))
    assert _versions(lake) == before

    # a truncated export (the last 30% of the records missing): the deletion guard refuses
    (data / "products.csv").write_text(original)
    _rewrite_products(data, lambda rows: rows[: int(len(rows) * 0.7)])
    run_stage("ingest", cfg, str(D2))
    before = _versions(lake)
    with pytest.raises(StageError, match=r"silver.products would lose 1\d of its \d\d rows.*max_delete_share"):
        run_stage("clean", cfg, str(D2))
    assert _versions(lake) == before

    # an unclosed quote read with multiLine=true swallows the records after it into one malformed row
    # (the export has no other quote character, so the swallow runs to the end of the file)
    df = pd.read_csv(pd.io.common.StringIO(original), dtype=str, keep_default_na=False)
    df = df.replace({",": " ", '"': ""}, regex=True)
    df.to_csv(data / "products.csv", index=False)
    _rewrite_products(data, lambda rows: rows[:5] + [rows[5].replace(",", ',"', 1)] + rows[6:])
    run_stage("ingest", cfg, str(D2), overrides=["sources.products.options.multiLine=true"])
    before = _versions(lake)
    with pytest.raises(StageError, match="silver.products would lose"):
        run_stage("clean", cfg, str(D2), overrides=["sources.products.options.multiLine=true"])
    assert _versions(lake) == before
    _assert_same(good, _contents(lake, list(good)))

    # the run says so explicitly: an empty catalog is accepted
    _rewrite_products(data, lambda rows: [])
    run_stage("ingest", cfg, str(D2))
    # (every judgment and event then names an unknown product: the quarantine bound is lifted too)
    assert main(["run", "clean", "--config", cfg, "--run-date", str(D2), "--allow-empty-source",
                 "--set", "clean.max_delete_share=1", "--set", "clean.max_quarantine_share=1"]) == 0
    assert lake.count("silver.products") == 0


def test_misread_export_stops_clean_with_the_reader_option_named(spark, sample, capsys):
    """Issue 9.8: descriptions with line breaks read with the default options."""
    cfg, data, lake = sample
    df = pd.read_csv(data / "products.csv", dtype=str, keep_default_na=False)
    df["description"] = df["description"] + "\nSecond line of the description.\nAnd a third."
    df.to_csv(data / "products.csv", index=False)
    run_stage("ingest", cfg, str(D1))
    assert main(["run", "clean", "--config", cfg, "--run-date", str(D1)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "critical" in err[0] and "quarantined" in err[0]
    assert "sources.products.options.multiLine: true" in err[0]
    assert not lake.exists("silver.products")
    ok = ["sources.products.options.multiLine=true"]
    run_stage("ingest", cfg, str(D1), overrides=ok)
    run_stage("clean", cfg, str(D1), overrides=ok)
    assert lake.count("silver.products") == len(df) - 2  # less the superseded duplicate and the bad price
    sp = lake.read_pandas("silver.products")
    assert sp["description"].str.contains("Second line").all()


def test_malformed_reason_names_the_reader_options(spark, sample):
    cfg, data, lake = sample
    with open(data / "products.csv", "a") as f:
        f.write('99999,"Unclosed title,5.00\n')
    _chain(cfg, D1, ("ingest", "clean"))
    q = lake.read_pandas("quarantine.products", filters=[("reason", "=", "malformed_record")])
    assert len(q) == 1 and "multiLine" in q["detail"][0] and "escape" in q["detail"][0]


# ------------------------------------------------------------------------------------ accounting


def test_records_the_reader_drops_fail_ingest(spark, sample):
    """A JSON Lines 'record' that is an empty array: Spark's reader yields no row for it, silently."""
    cfg, data, lake = sample
    with open(data / "interactions.jsonl", "a") as f:
        f.write("[]\n")
    with pytest.raises(StageError, match=r"interactions.jsonl holds \d+ records but .* produced \d+ rows"):
        run_stage("ingest", cfg, str(D1))
    assert lake.count("bronze.interactions", filters=[("run_date", "=", D1)]) == 0


def test_rows_lost_in_the_transforms_fail_clean_before_writing(spark, sample, monkeypatch):
    from mmpipeline.clean import transforms as T

    cfg, _, lake = sample
    run_stage("ingest", cfg, str(D1))
    real = T.tag_interactions
    monkeypatch.setattr(T, "tag_interactions", lambda bronze, ids=None, **kw: real(bronze, ids, **kw).limit(3))
    with pytest.raises(StageError, match=r"rows lost in interactions: bronze.interactions holds \d+ rows"):
        run_stage("clean", cfg, str(D1))
    assert not lake.exists("silver.products") and not lake.exists("silver.interactions")


def test_rows_multiplied_in_the_transforms_fail_clean_before_writing(spark, sample, monkeypatch):
    """The product check joins judgments to the kept ids without a distinct (each id is kept once):
    an id listed twice would duplicate judgment rows, and the bronze count refuses the run."""
    from mmpipeline.clean import transforms as T

    cfg, _, lake = sample
    run_stage("ingest", cfg, str(D1))
    real = T.tag_judgments
    monkeypatch.setattr(T, "tag_judgments", lambda bronze, c, ids=None, **kw: real(bronze, c, ids.unionByName(ids), **kw))
    with pytest.raises(StageError, match=r"rows duplicated in judgments: bronze.judgments holds \d+ rows"):
        run_stage("clean", cfg, str(D1))
    assert not lake.exists("silver.products") and not lake.exists("silver.judgments")


# ------------------------------------------------------------------------- one-line errors, lock


@pytest.mark.parametrize("args, expect", [
    (["--set", "clean.max_delet_share=0.2"], "clean.max_delet_share: unknown key"),
    (["--set", "clean.max_delete_share=lots"], "clean.max_delete_share: Input should be a valid number"),
    (["--run-date", "2026-13-45"], "run date '2026-13-45' is not a valid date"),
    (["--set", "lake.root=/proc/mmp-lake"], "set lake.root to a writable folder"),
    (["--set", "sources.products.path=/nonexistent/products.csv"], "no input file at /nonexistent/products.csv"),
])
def test_user_mistakes_are_one_line(spark, sample, capsys, args, expect):
    cfg, _, _ = sample
    argv = ["run", "ingest", "--config", cfg, *args]
    if "--run-date" not in args:
        argv += ["--run-date", str(D1)]
    assert main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("mmpipeline:")]
    assert len(err) == 1 and expect in err[0], err
    assert "Traceback" not in capsys.readouterr().err


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["run", "clean", "--config", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config file not found" in err[0]


def test_second_run_of_a_stage_is_refused_and_a_dead_holder_is_taken_over(spark, sample, capsys):
    from mmpipeline.lock import StageLock

    cfg, _, lake = sample
    with StageLock(lake.root, "ingest", D1):
        assert main(["run", "ingest", "--config", cfg, "--run-date", str(D1)]) == 1
    err = capsys.readouterr().err
    assert "stage ingest is already running on this lake: pid" in err
    assert not lake.exists("bronze.products")
    # a lock left by a dead process (kill -9) is taken over, and its run recorded as killed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = lake.root / "_locks" / "ingest.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "run_date": str(D0),
                                "started_at": "2026-03-01T01:00:00+00:00"}))
    run_stage("ingest", cfg, str(D1))
    runs = _stage_runs(lake).set_index(["run_date", "stage"])["status"].to_dict()
    assert runs == {(D0, "ingest"): "killed", (D1, "ingest"): "success"}
    assert not lock.exists()


# ---------------------------------------------------------------------------------------- kill -9


def _clean_subprocess(cfg: str, day: dt.date, fault: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMP_FAULT": fault}
    p = subprocess.run([sys.executable, "-m", "mmpipeline.cli", "run", "clean", "--config", cfg,
                        "--run-date", str(day)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    return p.returncode


@pytest.fixture(scope="module")
def before_kill(spark, cleaned_d1, tmp_path_factory):
    """A catalog cleaned for D1 and ingested for D2 (built once, from the module's D1 lake), and the
    catalog's contents after D1."""
    d1, reference = cleaned_d1
    base = tmp_path_factory.mktemp("kill9")
    cfg, _, _ = _copy_of(d1, base)
    run_stage("ingest", cfg, str(D2))
    return base, d1 / "data", reference


@pytest.mark.parametrize("fault", ["clean:before-write", "clean:after-silver.products"])
def test_kill_9_of_clean_leaves_consistent_tables_and_the_rerun_gives_the_same_result(spark, before_kill, tmp_path,
                                                                                       fault):
    import shutil

    base, data, reference = before_kill
    # each kill starts from its own copy of the same D1-cleaned, D2-ingested lake (the source files
    # and images are shared, read-only: image paths in silver stay those of the reference run)
    shutil.copytree(base / "lake", tmp_path / "lake")
    cfg, _, lake = _sample_at(tmp_path, data=data)
    rc = _clean_subprocess(cfg, D2, fault)
    assert rc == -signal.SIGKILL
    _assert_consistent(lake)
    assert (lake.root / "_locks" / "clean.lock").exists()  # left behind by the killed run
    runs = _stage_runs(lake).set_index(["run_date", "stage"])["status"].to_dict()
    assert runs[(D2, "clean")] == "running"
    run_stage("clean", cfg, str(D2))  # takes the stale lock over, records the killed run, completes
    statuses = []  # the killed record is a commit of ops.stage_runs
    for h in lake.history("ops.stage_runs"):
        df = lake.read_pandas("ops.stage_runs", version=h["version"])
        statuses += df[(df["stage"] == "clean") & (df["run_date"] == D2)]["status"].tolist()
    assert "killed" in statuses
    final = _stage_runs(lake).set_index(["run_date", "stage"])
    assert final.loc[(D2, "clean"), "status"] == "success"
    assert json.loads(final.loc[(D2, "clean"), "summary"])["recovered_killed_runs"] == [str(D2)]
    _assert_consistent(lake)
    # the same source for D2 as for D1: the re-run gives the uninterrupted result
    after = _contents(lake)
    for t in reference:
        if t.startswith("bronze."):
            continue
        per_run = [c for c in ("run_date", "_batch_id") if c in reference[t].columns and "run_date" in table(t).partition_by]
        a = _only(t, D1, reference[t]).drop(columns=per_run or ["run_date"])
        b = _only(t, D2, after[t]).drop(columns=per_run or ["run_date"])
        pd.testing.assert_frame_equal(a, b, obj=t)


def _only(name: str, day: dt.date, df: pd.DataFrame) -> pd.DataFrame:
    """A partitioned table's rows of one run date (snapshot tables: the whole table)."""
    if "run_date" not in table(name).partition_by:
        return df
    return df[df["run_date"] == str(day)].reset_index(drop=True)
