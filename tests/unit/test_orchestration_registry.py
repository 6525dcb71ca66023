"""The stage registry is the one list: jobs/, the CLI and (tests/dags) the DAGs agree with it."""

from __future__ import annotations

import ast
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from mmpipeline import cli
from mmpipeline.stages import ASSETS, DAG_IDS, STAGES, by_job, by_task_id, dag_stages, external_inputs

REPO = Path(__file__).resolve().parents[2]


def test_cli_stages_are_the_registry():
    assert cli.STAGES == {name: s.entry for name, s in STAGES.items()}


def test_jobs_folder_has_exactly_one_thin_entry_point_per_stage():
    files = {p.name for p in (REPO / "jobs").glob("*.py")}
    assert files == {s.job for s in STAGES.values()}, "jobs/*.py and mmpipeline/stages.py disagree"
    for name in files:
        text = (REPO / "jobs" / name).read_text()
        assert len(text.strip().splitlines()) <= 3, f"jobs/{name} is more than 3 lines"
        assert "job_main(__file__)" in text, name
        assert by_job(name).job == name


def test_a_job_file_runs_its_own_stage():
    """jobs/<stage>.py as a script: its file name picks the stage (the one-line error names it)."""
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "build_training_data.py"), "--config",
                           str(REPO / "no-such-config.yaml")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert "mmpipeline: run build-training-data failed:" in proc.stderr
    with pytest.raises(KeyError, match="not the entry point of any stage"):
        by_job("jobs/nope.py")


def _module_file(module: str) -> Path:
    base = REPO / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_entry_point_exists(name):
    """'module:function' names a module file defining (or importing) the function, read with ast."""
    module, _, func = STAGES[name].entry.partition(":")
    path = _module_file(module)
    assert path.is_file(), f"{name}: {path} missing"
    tree = ast.parse(path.read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert func in names, f"{name}: {module} has no {func}"


def test_registry_is_consistent():
    for s in STAGES.values():
        assert s.dag in DAG_IDS and s.doc and "\n" not in s.doc
        assert s.timeout <= dt.timedelta(hours=12)
        assert set(s.inputs) | set(s.outputs) <= set(ASSETS), s.name
        assert by_task_id(s.task_id) is s
    assert len({(s.dag, s.task_id) for s in STAGES.values()}) == len(STAGES)
    # each asset has one producing stage, which runs before any stage of the same DAG that reads it
    producers = {a: s for s in STAGES.values() for a in s.outputs}
    assert len(producers) == sum(len(s.outputs) for s in STAGES.values())
    order = list(STAGES)
    for s in STAGES.values():
        for a in s.inputs:
            p = producers.get(a)
            if p is not None and p.dag == s.dag:
                assert order.index(p.name) < order.index(s.name), f"{s.name} reads {a} before {p.name} writes it"


def test_ranker_and_scoring_inputs_come_from_other_dags():
    assert [a.name for a in external_inputs("mm_ranker_weekly")] == ["mmp_silver_catalog", "mmp_product_embeddings"]
    assert {a.name for a in external_inputs("mm_scoring_nightly")} == {
        "mmp_silver_catalog", "mmp_product_embeddings", "mmp_voice_transcripts", "mmp_champion_model"}
    assert [s.name for s in dag_stages("mm_scoring_nightly")] == ["score", "publish"]
    with pytest.raises(KeyError):
        dag_stages("nope")


def test_registry_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import mmpipeline.stages; "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith('mmpipeline') or "
            "m.split('.')[0] in ('pydantic', 'yaml', 'pandas', 'pyspark', 'torch', 'airflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['mmpipeline', 'mmpipeline.stages']"
