"""The Airflow side: assets, trigger params, default args and the tasks of a DAG, from the stage registry.

Imported by the DAG files at parse time, so only the standard library, ``airflow.sdk`` and the
import-light :mod:`mmpipeline.stages` / :mod:`mmpipeline.orchestration.runs` are imported at module
level; torch, pyspark, pandas, mlflow and Great Expectations only ever load in the stage processes
(``spark-submit jobs/<stage>.py`` or ``python -m mmpipeline.cli run <stage>``) or inside a task body.

How a stage runs
----------------
* Spark stages run through ``SparkSubmitOperator`` with ``jobs/<stage>.py``. The Spark connection id
  is ``mmp_spark`` (local mode, ``local[2]``, by default); point that connection at
  ``spark://host:7077``, ``yarn`` or ``k8s://...`` to run on a cluster, or set ``MMP_SPARK_CONN_ID``.
* torch-only stages run the same CLI in a subprocess of the worker (:mod:`.runner`).

Every DAG is a straight chain: ``resolve_run`` (trigger params, upstream asset event and logical
date -> one argument list, :mod:`.runs`), for the gated DAGs ``check_inputs`` (skip when the inputs
did not change, :mod:`.gates`), the DAG's stages in registry order, and for the gated DAGs
``record_inputs``.

Parse-time environment knobs (all optional): ``MMP_HOME`` (repository root: jobs/ and configs/),
``MMP_CONFIG`` (default config file), ``MMP_SPARK_CONN_ID``, ``MMP_TASK_RETRIES``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

from airflow.sdk import Asset, Param

from mmpipeline.orchestration.failures import log_dag_failure, log_failure_summary
from mmpipeline.orchestration.runs import (
    CONFIG_VARIABLE, DEFAULT_CONFIG, REPO_ROOT, brings_news, resolve_run_args, stage_argv_key, upstream_extras,
)
from mmpipeline.stages import ASSETS, RANKER_DAG, SCORING_DAG, STAGES, Stage, dag_stages

log = logging.getLogger("mmpipeline.airflow")

__all__ = ["ASSETS_BY_NAME", "GATED_DAGS", "OWNER", "SPARK_CONN_ID", "START_DATE", "asset", "default_args",
           "dag_tasks", "log_dag_failure", "resolve_task", "run_params", "stage_task"]

SPARK_CONN_ID = os.environ.get("MMP_SPARK_CONN_ID", "mmp_spark")
OWNER = "mmpipeline"
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
# DAGs that skip a run whose inputs did not change (mmpipeline.orchestration.gates)
GATED_DAGS = (RANKER_DAG, SCORING_DAG)


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


RETRIES = _int_env("MMP_TASK_RETRIES", 2)

_GROUP = "mmpipeline"
ASSETS_BY_NAME: dict[str, Asset] = {
    a.name: Asset(name=a.name, uri=a.uri, group=_GROUP,
                  extra={k: v for k, v in (("tables", ", ".join(a.tables)), ("note", a.note)) if v})
    for a in ASSETS.values()
}


def asset(name: str) -> Asset:
    """The Airflow Asset of a registry asset (e.g. ``asset("mmp_product_embeddings")``)."""
    return ASSETS_BY_NAME[name]


# ------------------------------------------------------------------------------------------ params
_EXTRA_PARAMS: dict[str, Param] = {
    "force": Param(False, type="boolean", title="Force",
                   description="Run even when the inputs did not change since the last successful run "
                               "(ranker, scoring), and let publish serve a run date older than the current one."),
    "allow_empty_source": Param(False, type="boolean", title="Allow an empty source",
                                description="clean: accept a source with no records (it empties its silver "
                                            "table); without it an empty source fails the run."),
}


def trigger_param_names(dag_id: str) -> list[str]:
    """The extra trigger params a DAG offers: those its stages accept, plus ``force`` for a gated DAG."""
    names = dict.fromkeys(p for s in dag_stages(dag_id) for p in s.trigger_params)
    if dag_id in GATED_DAGS:
        names["force"] = None
    return list(names)


def run_params(dag_id: str | None = None) -> dict[str, Param]:
    """Params shown in the UI's trigger form (and accepted as ``conf`` by the REST API / dags test)."""
    params = {
        "config": Param(None, type=["null", "string"], title="Config file",
                        description="YAML config, absolute or relative to the repository (e.g. configs/fashion.yaml). "
                                    f"Empty: the Variable '{CONFIG_VARIABLE}', else {DEFAULT_CONFIG}."),
        "run_date": Param(None, type=["null", "string"], format="date", title="Run date",
                          description="Logical run date YYYY-MM-DD. Empty: the run's logical date "
                                      "(or the upstream run's date for asset-triggered runs)."),
        "full_refresh": Param(False, type="boolean", title="Full refresh",
                              description="Recompute everything (embed re-encodes all products; the input "
                                          "check of the ranker and scoring DAGs does not skip)."),
        "model_alias": Param(None, type=["null", "string"], title="Model alias",
                             description="Registered-model alias to score with / compare against "
                                         "(empty: the config's default, 'champion')."),
        "overrides": Param([], type="array", items={"type": "string"}, title="Config overrides",
                           description="KEY=VALUE config overrides, e.g. embed.batch_size=64 (passed as --set)."),
    }
    for name in trigger_param_names(dag_id) if dag_id else ():
        params[name] = _EXTRA_PARAMS[name]
    return params


def default_args(**extra: Any) -> dict[str, Any]:
    args = {
        "owner": OWNER,
        "retries": RETRIES,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,  # 2, 4, 8 ... minutes
        "max_retry_delay": dt.timedelta(minutes=30),
        "execution_timeout": dt.timedelta(hours=2),
        "on_failure_callback": log_failure_summary,
        "on_retry_callback": log_failure_summary,
    }
    args.update(extra)
    return args


# ------------------------------------------------------------------------------------------- tasks
def resolve_run_callable(**context: Any) -> dict[str, Any]:
    """Body of the ``resolve_run`` task (runs on the worker)."""
    from airflow.sdk import Variable

    dag_run = context.get("dag_run")
    upstream = upstream_extras(context)
    if upstream and not any(brings_news(e) for e in upstream):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("triggered only by a ranker evaluation that kept the current champion: "
                                   "nothing new to score, the published index stays as it is")
    try:
        variable_config = Variable.get(CONFIG_VARIABLE, default=None)
    except Exception:  # no metadata DB / API reachable: fall back to the default
        variable_config = None
    resolved = resolve_run_args(
        context.get("params") or {}, logical_date=context.get("logical_date"),
        run_after=getattr(dag_run, "run_after", None), upstream=[e for e in upstream if brings_news(e)],
        variable_config=variable_config)
    log.info("mmpipeline run: config=%s run_date=%s full_refresh=%s model_alias=%s overrides=%s",
             resolved["config"], resolved["run_date"], resolved["full_refresh"], resolved["model_alias"],
             resolved["overrides"])
    log.info("each stage runs the equivalent of: %s", resolved["cli"])
    return resolved


def resolve_task():
    """The first task of every DAG (task id ``resolve_run``)."""
    from airflow.sdk import task

    return task(task_id="resolve_run", multiple_outputs=True, retries=0,
                execution_timeout=dt.timedelta(minutes=5),
                doc_md="Resolve config file, run date and options from the trigger's params, the "
                       "upstream asset event and the logical date.")(resolve_run_callable)()


def _annotate_outlets(outlets: list[Asset]):
    """post_execute hook: attach the run's config and run date to the emitted asset events."""
    def hook(context: Any, result: Any = None) -> None:
        try:
            resolved = context["ti"].xcom_pull(task_ids="resolve_run") or {}
            extra = {"config": resolved.get("config"), "run_date": resolved.get("run_date"),
                     "dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
            if isinstance(result, dict):
                extra["summary"] = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))}
            for a in outlets:
                context["outlet_events"][a].extra.update(extra)
        except Exception as e:
            log.warning("could not annotate asset events: %s", e)
    return hook


def stage_task(stage: Stage | str, resolved: Any, **kwargs: Any):
    """One pipeline stage as an Airflow task (SparkSubmitOperator for Spark stages, else the CLI),
    with the registry's outputs as outlets and inputs as inlets."""
    st = STAGES[stage] if isinstance(stage, str) else stage
    outlets = [asset(a) for a in st.outputs]
    argv = resolved[stage_argv_key(st.task_id)] if st.trigger_params else resolved["argv"]
    common: dict[str, Any] = {
        "task_id": st.task_id,
        "execution_timeout": st.timeout,
        "outlets": outlets,
        "inlets": [asset(a) for a in st.inputs],
        "doc_md": f"**{st.name}**: {st.doc}\n\nSame as `mmpipeline run {st.name} --config ... --run-date ...` "
                  f"(`{st.entry}`).",
    }
    if st.display_name:
        common["task_display_name"] = st.display_name
    if outlets:
        common["post_execute"] = _annotate_outlets(outlets)
    common.update(kwargs)
    if st.spark:
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

        from mmpipeline.orchestration.runner import child_env

        return SparkSubmitOperator(
            application=str(REPO_ROOT / "jobs" / st.job), application_args=argv, conn_id=SPARK_CONN_ID,
            name=f"mmpipeline-{st.name}", env_vars=child_env(), **common)
    from airflow.sdk import task

    @task(**common)
    def _run(argv: list[str], stage: str = st.name) -> dict[str, Any]:
        from mmpipeline.orchestration.runner import run_cli_stage

        return run_cli_stage(stage, argv)

    return _run(argv)


def check_inputs_task(dag_id: str, resolved: Any):
    """``check_inputs``: skip the rest of the run when its inputs did not change (gates.check)."""
    from airflow.sdk import task

    @task(task_id="check_inputs", retries=1, execution_timeout=dt.timedelta(minutes=15),
          doc_md="Fingerprint the DAG's inputs (lake tables, model alias, config section) and skip the run "
                 "when they are the same as at the last successful run (trigger param `force` runs anyway).")
    def check_inputs(config: str, run_date: str, overrides: list[str], model_alias: str | None,
                     force: bool, full_refresh: bool) -> dict[str, Any]:
        from mmpipeline.orchestration.gates import check

        checked = check({"config": config, "run_date": run_date, "overrides": overrides,
                         "model_alias": model_alias, "force": force, "full_refresh": full_refresh}, dag_id)
        if not checked["run"]:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(checked["reason"])
        log.info("check_inputs: %s", checked["reason"])
        return checked

    return check_inputs(resolved["config"], resolved["run_date"], resolved["overrides"], resolved["model_alias"],
                        resolved["force"], resolved["full_refresh"])


def record_inputs_task(dag_id: str, resolved: Any, checked: Any):
    """``record_inputs``: after the last stage, store the input fingerprint this run succeeded with."""
    from airflow.sdk import task

    @task(task_id="record_inputs", execution_timeout=dt.timedelta(minutes=5),
          doc_md="Record the input fingerprint of this successful run (the next run skips if it is unchanged).")
    def record_inputs(checked: dict[str, Any], run_date: str, **context: Any) -> str:
        from mmpipeline.orchestration.gates import record

        return str(record(checked, dag_id, run_date, str(context.get("run_id"))))

    return record_inputs(checked, resolved["run_date"])


def dag_tasks(dag_id: str) -> list[Any]:
    """The tasks of a DAG in chain order: resolve_run, [check_inputs], its stages, [record_inputs]."""
    resolved = resolve_task()
    tasks = [resolved]
    checked = None
    if dag_id in GATED_DAGS:
        checked = check_inputs_task(dag_id, resolved)
        tasks.append(checked)
    tasks += [stage_task(st, resolved) for st in dag_stages(dag_id)]
    if checked is not None:
        tasks.append(record_inputs_task(dag_id, resolved, checked))
    return tasks
