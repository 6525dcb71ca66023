"""DAG integrity: the DagBag loads cleanly and every DAG is wired, scheduled and guarded as intended."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"

from mmpipeline.orchestration.dags import ASSETS_BY_NAME, GATED_DAGS, SPARK_CONN_ID
from mmpipeline.stages import DAG_IDS, STAGES, dag_stages

CHAMPION_MODEL, IMAGE_TOWER = ASSETS_BY_NAME["mmp_champion_model"], ASSETS_BY_NAME["mmp_image_tower"]
PRODUCT_EMBEDDINGS, SEARCH_RANKING = ASSETS_BY_NAME["mmp_product_embeddings"], ASSETS_BY_NAME["mmp_search_ranking"]
SILVER_CATALOG = ASSETS_BY_NAME["mmp_silver_catalog"]


def _expected(dag_id: str) -> list[str]:
    """A DAG's tasks from the registry: resolve_run, [check_inputs], its stages, [record_inputs]."""
    gated = dag_id in GATED_DAGS
    return (["resolve_run"] + (["check_inputs"] if gated else []) + [s.task_id for s in dag_stages(dag_id)]
            + (["record_inputs"] if gated else []))


EXPECTED = {d: _expected(d) for d in DAG_IDS}
DAG_FILES = sorted(p for p in DAGS.glob("mm_*.py"))
HEAVY = ("torch", "pyspark", "pandas", "mlflow", "great_expectations", "sentence_transformers", "deltalake")
# the only mmpipeline modules a DAG file may load at parse time (standard library + airflow.sdk only)
PARSE_TIME_MODULES = {"mmpipeline", "mmpipeline.stages", "mmpipeline.orchestration", "mmpipeline.orchestration.dags",
                      "mmpipeline.orchestration.runs", "mmpipeline.orchestration.failures",
                      "mmpipeline.orchestration.runner"}


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED)


def test_pinned_pipeline_order():
    """The registry's order, written out once (a newcomer's map; change it with the registry)."""
    assert EXPECTED == {
        "mm_catalog_daily": ["resolve_run", "ingest", "clean", "validate", "train_image_tower", "tune_asr", "transcribe", "embed"],
        "mm_ranker_weekly": ["resolve_run", "check_inputs", "tune_text_tower", "reembed_text", "build_training_data",
                             "train", "evaluate_and_promote", "record_inputs"],
        "mm_scoring_nightly": ["resolve_run", "check_inputs", "score", "publish", "record_inputs"],
    }


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_stage_tasks_follow_the_registry(dagbag, dag_id):
    """Each stage task is the registry's stage: its outputs as outlets, its inputs as inlets, its timeout."""
    dag = dagbag.dags[dag_id]
    for st in dag_stages(dag_id):
        task = dag.get_task(st.task_id)
        assert {a.uri for a in task.outlets} == {ASSETS_BY_NAME[a].uri for a in st.outputs}, st.name
        assert {a.uri for a in task.inlets} == {ASSETS_BY_NAME[a].uri for a in st.inputs}, st.name
        assert task.execution_timeout == st.timeout
        assert st.name in task.doc_md and st.entry in task.doc_md
    assert {t.task_id for t in dag.tasks} - {"resolve_run", "check_inputs", "record_inputs"} == {
        s.task_id for s in STAGES.values() if s.dag == dag_id}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_tasks_in_expected_order(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    ids = EXPECTED[dag_id]
    assert sorted(dag.task_ids) == sorted(ids)
    for up, down in zip(ids[1:], ids[2:]):  # a straight chain: each stage waits for the previous one
        # (check_inputs also hands its fingerprint straight to record_inputs)
        extra = {"record_inputs"} if up == "check_inputs" else set()
        assert dag.get_task(up).downstream_task_ids == {down} | extra, f"{up} -> {down}"
    # every stage reads its arguments from resolve_run, the only root
    assert dag.get_task("resolve_run").upstream_task_ids == set()
    assert dag.get_task("resolve_run").downstream_task_ids == set(ids[1:])
    assert [t.task_id for t in dag.roots] == ["resolve_run"]
    assert [t.task_id for t in dag.leaves] == [ids[-1]]


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_no_cycles(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    state: dict[str, int] = {}

    def visit(tid: str) -> None:
        if state.get(tid) == 1:
            raise AssertionError(f"cycle through {tid}")
        if state.get(tid) == 2:
            return
        state[tid] = 1
        for d in dag.get_task(tid).downstream_task_ids:
            visit(d)
        state[tid] = 2

    for tid in dag.task_ids:
        visit(tid)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_owner_tags_catchup_retries_timeouts_callbacks(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "mmpipeline" in dag.tags and len(dag.tags) >= 2
    assert dag.owner == "mmpipeline"
    assert dag.on_failure_callback is not None
    assert dag.dagrun_timeout is not None
    assert dag.doc_md
    for task in dag.tasks:
        assert task.owner == "mmpipeline"
        assert task.execution_timeout is not None and task.execution_timeout <= dt.timedelta(hours=12)
        assert task.on_failure_callback, task.task_id
        if task.task_id == "resolve_run":
            continue  # deterministic parameter resolution: nothing to retry
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff > 0, task.task_id
        assert task.max_retry_delay is not None


def test_schedules(dagbag):
    """Catalog on its cron; ranker when the catalog refreshed silver AND embeddings (weekly cron as
    fallback); scoring on fresh embeddings OR a new champion (05:00 cron as fallback)."""
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
    from airflow.sdk.definitions.asset import AssetAll, AssetAny

    cat = dagbag.dags["mm_catalog_daily"].timetable
    assert isinstance(cat, CronTriggerTimetable) and cat.expression == "0 1 * * *"
    rank = dagbag.dags["mm_ranker_weekly"].timetable
    assert isinstance(rank, AssetOrTimeSchedule) and rank.timetable.expression == "0 3 * * 0"
    assert isinstance(rank.asset_condition, AssetAll)  # all: a run starts after embed, not after validate
    assert {a.uri for a in rank.asset_condition.objects} == {PRODUCT_EMBEDDINGS.uri, SILVER_CATALOG.uri}
    score = dagbag.dags["mm_scoring_nightly"].timetable
    assert isinstance(score, AssetOrTimeSchedule)
    assert score.timetable.expression == "0 5 * * *"
    assert isinstance(score.asset_condition, AssetAny)
    assert {a.uri for a in score.asset_condition.objects} == {PRODUCT_EMBEDDINGS.uri, CHAMPION_MODEL.uri}


@pytest.mark.parametrize("dag_id", sorted(GATED_DAGS))
def test_gated_dags_check_their_inputs_before_any_stage_and_record_after_the_last(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    first, last = dag_stages(dag_id)[0].task_id, dag_stages(dag_id)[-1].task_id
    check, record = dag.get_task("check_inputs"), dag.get_task("record_inputs")
    assert first in check.downstream_task_ids
    assert record.upstream_task_ids == {"resolve_run", "check_inputs", last}
    # a skipped check skips everything after it (no stage may run "whatever happens upstream")
    assert all(t.trigger_rule == "all_success" for t in dag.tasks), {t.task_id: t.trigger_rule for t in dag.tasks}
    assert "force" in dag.params.keys()


def test_assets_link_the_dags(dagbag):

    def outlets(dag_id: str, task_id: str) -> set[str]:
        return {a.uri for a in dagbag.dags[dag_id].get_task(task_id).outlets}

    assert PRODUCT_EMBEDDINGS.uri in outlets("mm_catalog_daily", "embed")
    # the image tower is trained by its own task before embed (embed never trains), linked by an asset
    assert IMAGE_TOWER.uri in outlets("mm_catalog_daily", "train_image_tower")
    assert IMAGE_TOWER.uri in {a.uri for a in dagbag.dags["mm_catalog_daily"].get_task("embed").inlets}
    assert CHAMPION_MODEL.uri in outlets("mm_ranker_weekly", "evaluate_and_promote")
    assert SEARCH_RANKING.uri in outlets("mm_scoring_nightly", "publish")


def test_spark_stages_use_spark_submit_with_the_project_connection(dagbag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    spark_tasks = {("mm_catalog_daily", t) for t in ("ingest", "clean", "validate", "embed")}
    spark_tasks |= {("mm_ranker_weekly", "build_training_data"), ("mm_scoring_nightly", "score"),
                    ("mm_scoring_nightly", "publish")}
    for dag_id, task_id in spark_tasks:
        task = dagbag.dags[dag_id].get_task(task_id)
        assert isinstance(task, SparkSubmitOperator), (dag_id, task_id)
        assert task._conn_id == SPARK_CONN_ID
        assert Path(task.application).is_file(), task.application  # jobs/<stage>.py exists
    for task_id in ("train", "evaluate_and_promote"):  # torch stages: the CLI in a subprocess
        assert not isinstance(dagbag.dags["mm_ranker_weekly"].get_task(task_id), SparkSubmitOperator)
    assert not isinstance(dagbag.dags["mm_catalog_daily"].get_task("train_image_tower"), SparkSubmitOperator)
    assert not isinstance(dagbag.dags["mm_catalog_daily"].get_task("transcribe"), SparkSubmitOperator)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_params_for_manual_triggers(dagbag, dag_id):
    params = dagbag.dags[dag_id].params
    assert {"config", "run_date", "full_refresh", "model_alias", "overrides"} <= set(params.keys())
    raw = {k: params.get_param(k) for k in params.keys()}
    assert all(p.description for p in raw.values())
    assert raw["full_refresh"].schema["type"] == "boolean" and raw["full_refresh"].value is False
    assert raw["run_date"].schema.get("format") == "date"
    assert raw["run_date"].value is None  # default: the logical date
    params.validate()  # defaults validate against their schemas


def test_trigger_params_where_the_stages_take_them(dagbag):
    assert "allow_empty_source" in dagbag.dags["mm_catalog_daily"].params.keys()  # clean
    assert "force" in dagbag.dags["mm_scoring_nightly"].params.keys()  # publish + the input check
    assert "force" in dagbag.dags["mm_ranker_weekly"].params.keys()  # the input check
    assert "force" not in dagbag.dags["mm_catalog_daily"].params.keys()


@pytest.fixture(scope="module")
def import_costs() -> dict[str, dict]:
    """Import each DAG file in one fresh interpreter that already has Airflow loaded (as the
    dag-processor has): seconds per file and the heavy modules present afterwards."""
    code = f"""
import importlib.util, json, sys, time
import airflow.sdk  # Airflow itself is already loaded in the dag-processor
import airflow.providers.apache.spark.operators.spark_submit, airflow.providers.standard.decorators.python
out = {{}}
for i, path in enumerate({[str(p) for p in DAG_FILES]!r}):
    t0 = time.perf_counter()
    spec = importlib.util.spec_from_file_location(f"dagfile_{{i}}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out[path.rsplit("/", 1)[-1]] = {{"seconds": time.perf_counter() - t0,
                                    "heavy": [m for m in {HEAVY!r} if m in sys.modules],
                                    "mmpipeline": sorted(m for m in sys.modules if m.split(".")[0] == "mmpipeline")}}
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [p.name for p in DAG_FILES])
def test_dag_file_imports_fast_without_heavy_modules(import_costs, name):
    """Parse cost of each DAG file on top of Airflow itself (the first one also pays for
    mmpipeline.orchestration.dags)."""
    result = import_costs[name]
    assert result["heavy"] == [], f"{name} imports {result['heavy']} at module level"
    extra = set(result["mmpipeline"]) - PARSE_TIME_MODULES
    assert not extra, f"{name} loads {sorted(extra)} at parse time (keep DAG-side imports light)"
    assert result["seconds"] < 1.0, f"{name} took {result['seconds']:.2f}s to import"
