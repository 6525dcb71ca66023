"""Shared wiring for the mmpipeline DAGs: stages, assets, params, defaults, callbacks.

Only the standard library and ``airflow.sdk`` are imported at module level, so a DAG file parses in
milliseconds once Airflow itself is loaded. torch, pyspark and pandas are only ever imported by the
stage processes (``spark-submit jobs/<stage>.py`` or ``python -m mmpipeline.cli run <stage>``).

How a stage runs
----------------
* Spark stages (ingest, clean, validate, embed, build-training-data, score, publish) run through
  ``SparkSubmitOperator`` with ``jobs/<stage>.py``. The Spark connection id is ``mmp_spark`` (local
  mode, ``local[2]``, by default); point that connection at ``spark://host:7077``, ``yarn`` or
  ``k8s://...`` to run on a cluster, or set ``MMP_SPARK_CONN_ID`` to use another connection.
* torch-only stages (train-image-tower, train, evaluate) never start a SparkSession: they run the
  same CLI (``python -m mmpipeline.cli run <stage>``) in a subprocess of the Airflow worker. A
  spark-submit would add a JVM launch for nothing and, with a cluster connection in cluster deploy
  mode, would ship a GPU training job to a Spark executor host. In a subprocess the model's memory
  is released when the stage ends, and the task's XCom is the stage's JSON summary.

Every stage task gets the same arguments from the first task, ``resolve_run``, which turns the
trigger's params (config file, run date, full refresh, model alias, config overrides), the upstream
asset event (for asset-triggered runs) and the logical date into one argument list.

Parse-time environment knobs (all optional): ``MMP_HOME`` (repository root: jobs/ and configs/),
``MMP_CONFIG`` (default config file), ``MMP_SPARK_CONN_ID``, ``MMP_TASK_RETRIES``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from airflow.sdk import Asset, Param

log = logging.getLogger("mmpipeline.airflow")

REPO_ROOT = Path(os.environ.get("MMP_HOME") or Path(__file__).resolve().parents[1])
DEFAULT_CONFIG = os.environ.get("MMP_CONFIG", "configs/homedepot.yaml")
SPARK_CONN_ID = os.environ.get("MMP_SPARK_CONN_ID", "mmp_spark")
CONFIG_VARIABLE = "mmp_config"  # Airflow Variable: default config file when the trigger names none
OWNER = "mmpipeline"
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


RETRIES = _int_env("MMP_TASK_RETRIES", 2)

# ------------------------------------------------------------------------------------------ assets
# Logical names for the lake tables the DAGs hand over to each other (the physical location depends
# on the config's lake root, so the URI names the table, not a path).
_GROUP = "mmpipeline"
SILVER_CATALOG = Asset(name="mmp_silver_catalog", uri="x-mmpipeline://lake/silver/products", group=_GROUP,
                       extra={"tables": "silver.products, silver.queries, silver.judgments"})
PRODUCT_EMBEDDINGS = Asset(name="mmp_product_embeddings", uri="x-mmpipeline://lake/gold/product_embeddings",
                           group=_GROUP, extra={"tables": "gold.product_embeddings, gold.query_embeddings"})
IMAGE_TOWER = Asset(name="mmp_image_tower", uri="x-mmpipeline://mlflow/image-tower/champion", group=_GROUP,
                    extra={"registered_model": "<mlflow.model_name>-image-tower"})
TRAINING_DATA = Asset(name="mmp_training_data", uri="x-mmpipeline://lake/gold/training_data", group=_GROUP)
CHAMPION_MODEL = Asset(name="mmp_champion_model", uri="x-mmpipeline://mlflow/ranker/champion", group=_GROUP)
VOICE_TRANSCRIPTS = Asset(name="mmp_voice_transcripts", uri="x-mmpipeline://lake/gold/voice_transcripts",
                          group=_GROUP, extra={"tables": "gold.voice_transcripts, gold.voice_features"})
SEARCH_RANKING = Asset(name="mmp_search_ranking", uri="x-mmpipeline://lake/gold/search_ranking", group=_GROUP,
                       extra={"tables": "gold.search_ranking, gold.product_vectors"})


# ------------------------------------------------------------------------------------------ stages
@dataclass(frozen=True)
class Stage:
    name: str  # `mmpipeline run NAME`
    spark: bool  # SparkSubmitOperator (True) or the CLI in a subprocess (False)
    timeout: dt.timedelta
    doc: str

    @property
    def task_id(self) -> str:
        return self.name.replace("-", "_")

    @property
    def job(self) -> Path:
        return REPO_ROOT / "jobs" / f"{self.task_id}.py"


_H = dt.timedelta(hours=1)
STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("ingest", True, 1 * _H, "Sources (CSV/JSON/Parquet) -> bronze.* Delta tables with ingest metadata."),
    Stage("clean", True, 2 * _H, "bronze.* -> silver.* (normalised, de-duplicated, image checks); rejects -> quarantine.*."),
    Stage("validate", True, 1 * _H, "Great Expectations suites on silver.*; a failed critical expectation fails the task."),
    Stage("train-image-tower", False, 4 * _H, "Contrastive image tower into the text-embedding space, registered "
          "in MLflow; a no-op when images are off or a tower for the same inputs is registered."),
    Stage("embed", True, 4 * _H, "Incremental text/image/query embeddings -> gold.*_embeddings."),
    Stage("transcribe", False, 2 * _H, "Voice queries: decode, resample, features, Whisper (catalog prompt) "
                                       "-> gold.voice_transcripts / gold.voice_features (incremental)."),
    Stage("build-training-data", True, 2 * _H, "Judgments + interactions + negatives -> training table."),
    Stage("train", False, 6 * _H, "Fusion ranker training, registered in MLflow with alias 'challenger'."),
    Stage("evaluate", False, 2 * _H, "Evaluate the challenger against baselines and the champion; promote it if it wins."),
    Stage("score", True, 3 * _H, "Head queries x candidates scored by the champion -> gold.search_ranking."),
    Stage("publish", True, 1 * _H, "Validate the ranking (Great Expectations), then mark it the current index version."),
]}


# ------------------------------------------------------------------------------------------ params
def run_params() -> dict[str, Param]:
    """Params shown in the UI's trigger form (and accepted as ``conf`` by the REST API / dags test)."""
    return {
        "config": Param(None, type=["null", "string"], title="Config file",
                        description="YAML config, absolute or relative to the repository (e.g. configs/fashion.yaml). "
                                    f"Empty: the Variable '{CONFIG_VARIABLE}', else {DEFAULT_CONFIG}."),
        "run_date": Param(None, type=["null", "string"], format="date", title="Run date",
                          description="Logical run date YYYY-MM-DD. Empty: the run's logical date "
                                      "(or the upstream run's date for asset-triggered runs)."),
        "full_refresh": Param(False, type="boolean", title="Full refresh",
                              description="Recompute everything (embed re-encodes all products)."),
        "model_alias": Param(None, type=["null", "string"], title="Model alias",
                             description="Registered-model alias to score with / compare against "
                                         "(empty: the config's default, 'champion')."),
        "overrides": Param([], type="array", items={"type": "string"}, title="Config overrides",
                           description="KEY=VALUE config overrides, e.g. embed.batch_size=64 (passed as --set)."),
    }


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


# ------------------------------------------------------------------------------- run resolution
def _as_date(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).date().isoformat() if value.tzinfo else value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise ValueError(f"run_date must be YYYY-MM-DD, got {value!r}") from None


def resolve_run_args(params: Mapping[str, Any], *, logical_date: Any = None, run_after: Any = None,
                     upstream: Iterable[Mapping[str, Any]] = (), variable_config: str | None = None,
                     default_config: str = DEFAULT_CONFIG, repo_root: Path = REPO_ROOT,
                     today: dt.date | None = None) -> dict[str, Any]:
    """Pure function: trigger params + dates (+ upstream asset-event extras) -> the stage arguments.

    Precedence: explicit param > upstream asset event (asset-triggered runs) > Variable > default.
    """
    upstream = [u for u in upstream if isinstance(u, Mapping) and (u.get("config") or u.get("run_date"))]
    latest = upstream[-1] if upstream else {}
    config = params.get("config") or latest.get("config") or variable_config or default_config
    path = Path(str(config)).expanduser()
    if not path.is_absolute():
        path = (repo_root / path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (set the 'config' param of the trigger, "
                                f"or the Airflow Variable '{CONFIG_VARIABLE}')")
    run_date = (_as_date(params.get("run_date")) or _as_date(latest.get("run_date")) or _as_date(logical_date)
                or _as_date(run_after) or (today or dt.datetime.now(dt.timezone.utc).date()).isoformat())
    full_refresh = bool(params.get("full_refresh"))
    model_alias = params.get("model_alias") or None
    overrides = [str(o) for o in (params.get("overrides") or [])]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be KEY=VALUE, got {bad}")
    argv = ["--config", str(path), "--run-date", run_date]
    if full_refresh:
        argv.append("--full-refresh")
    if model_alias:
        argv += ["--model-alias", str(model_alias)]
    for o in overrides:
        argv += ["--set", o]
    return {
        "config": str(path), "run_date": run_date, "full_refresh": full_refresh, "model_alias": model_alias,
        "overrides": overrides, "argv": argv, "cli": "mmpipeline run STAGE " + shlex.join(argv),
    }


def _upstream_extras(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Extras of the asset events that triggered this run (oldest first); empty for other runs."""
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        events = context.get("triggering_asset_events") or {}
        for evs in events.values():
            for ev in evs:
                out.append((str(getattr(ev, "timestamp", "")), dict(getattr(ev, "extra", None) or {})))
    except Exception as e:  # never let a lookup of optional metadata fail the run
        log.warning("could not read triggering asset events: %s", e)
    return [e for _, e in sorted(out, key=lambda x: x[0])]


def brings_news(extra: Mapping[str, Any]) -> bool:
    """False only for an evaluation event that kept the previous champion (nothing new to score)."""
    summary = extra.get("summary") or {}
    return not (isinstance(summary, Mapping) and summary.get("promoted") is False)


def resolve_run_callable(**context: Any) -> dict[str, Any]:
    """Body of the ``resolve_run`` task (runs on the worker)."""
    from airflow.sdk import Variable

    dag_run = context.get("dag_run")
    upstream = _upstream_extras(context)
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


# ------------------------------------------------------------------------------------ stage tasks
def _child_env() -> dict[str, str]:
    """Environment for stage processes: the worker's interpreter and its bin/ first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {
        "PATH": bin_dir + (os.pathsep + path if path else ""),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
    }


def _annotate_outlets(outlets: list[Asset]):
    """post_execute hook: attach the run's config and run date to the emitted asset events."""
    def hook(context: Any, result: Any = None) -> None:
        try:
            resolved = context["ti"].xcom_pull(task_ids="resolve_run") or {}
            extra = {"config": resolved.get("config"), "run_date": resolved.get("run_date"),
                     "dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
            if isinstance(result, dict):
                extra["summary"] = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))}
            for asset in outlets:
                context["outlet_events"][asset].extra.update(extra)
        except Exception as e:
            log.warning("could not annotate asset events: %s", e)
    return hook


def run_cli_stage(stage: str, argv: list[str]) -> dict[str, Any]:
    """Run ``python -m mmpipeline.cli run STAGE ARGV`` in a subprocess, streaming its output to the log.

    Returns the stage's JSON summary (its last stdout line); raises with the output's tail on failure.
    The child is terminated if the task is killed or times out.
    """
    import collections
    import json
    import subprocess

    cmd = [sys.executable, "-m", "mmpipeline.cli", "run", stage, *argv]
    env = {**os.environ, **_child_env()}
    log.info("running: %s", shlex.join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=25)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(REPO_ROOT), bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.info("%s", line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if rc != 0:
        raise RuntimeError(f"mmpipeline run {stage} exited with code {rc}; last output:\n" + "\n".join(tail))
    for line in reversed(tail):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {"stage": stage}


def stage_task(stage_name: str, resolved: Any, outlets: list[Asset] | None = None, **kwargs: Any):
    """One pipeline stage as an Airflow task (SparkSubmitOperator for Spark stages, else the CLI)."""
    st = STAGES[stage_name]
    outlets = list(outlets or [])
    common: dict[str, Any] = {
        "task_id": kwargs.pop("task_id", st.task_id),
        "execution_timeout": kwargs.pop("execution_timeout", st.timeout),
        "outlets": outlets,
        "doc_md": f"**{st.name}**: {st.doc}\n\nSame as `mmpipeline run {st.name} --config ... --run-date ...`.",
    }
    if outlets:
        common["post_execute"] = _annotate_outlets(outlets)
    if st.spark:
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

        return SparkSubmitOperator(
            application=str(st.job), application_args=resolved["argv"], conn_id=SPARK_CONN_ID,
            name=f"mmpipeline-{st.name}", env_vars=_child_env(), **common, **kwargs)
    from airflow.sdk import task

    @task(**common, **kwargs)
    def _run(argv: list[str], stage: str = st.name) -> dict[str, Any]:
        return run_cli_stage(stage, argv)

    return _run(resolved["argv"])


def resolve_task():
    """The first task of every DAG (task id ``resolve_run``)."""
    from airflow.sdk import task

    return task(task_id="resolve_run", multiple_outputs=True, retries=0,
                execution_timeout=dt.timedelta(minutes=5),
                doc_md="Resolve config file, run date and options from the trigger's params, the "
                       "upstream asset event and the logical date.")(resolve_run_callable)()


# --------------------------------------------------------------------------------------- callbacks
def failure_paragraph(*, dag_id: str, task_id: str, run_id: str, try_number: int | None, max_tries: int | None,
                      error: Any, resolved: Mapping[str, Any] | None, will_retry: bool,
                      downstream: Iterable[str] = (), log_url: str | None = None) -> str:
    """One readable paragraph about a failed task: what, where, why, what happens next, how to re-run."""
    resolved = resolved or {}
    stage = next((s.name for s in STAGES.values() if s.task_id == task_id), task_id)
    err = " ".join(str(error or "unknown error").split())
    if len(err) > 900:
        err = err[:400] + " ... " + err[-480:]
    attempt = f"attempt {try_number} of {max_tries}" if try_number and max_tries else "its attempt"
    where = (f"run date {resolved['run_date']}, config {resolved['config']}" if resolved.get("config")
             else "run parameters unresolved")
    nxt = ("Airflow will retry it after the backoff delay." if will_retry else
           "No retries are left, so " + (f"the downstream tasks ({', '.join(sorted(downstream))}) will not run "
                                         "and the outputs of the previous successful run stay current."
                                         if downstream else "the DAG run fails; earlier outputs stay current."))
    rerun = (f" To reproduce it outside Airflow: mmpipeline run {stage} "
             f"{shlex.join(resolved.get('argv', []))}." if resolved.get("argv") and stage in STAGES else "")
    url = f" Log: {log_url}." if log_url else ""
    return (f"mmpipeline: task {dag_id}.{task_id} failed on {attempt} (run {run_id}, {where}). "
            f"Error: {err}. {nxt}{rerun}{url}")


def log_failure_summary(context: Mapping[str, Any]) -> None:
    """on_failure_callback: log one paragraph that an operator can act on."""
    try:
        ti = context.get("ti") or context.get("task_instance")
        task = context.get("task")
        resolved = None
        try:
            resolved = ti.xcom_pull(task_ids="resolve_run") if ti is not None else None
        except Exception:
            resolved = None
        try_number = getattr(ti, "try_number", None)
        retries = getattr(task, "retries", 0) or 0
        max_tries = retries + 1
        downstream = []
        try:
            downstream = [t.task_id for t in task.get_flat_relatives(upstream=False)]
        except Exception:
            pass
        will_retry = bool(try_number and try_number <= retries)
        para = failure_paragraph(
            dag_id=getattr(context.get("dag"), "dag_id", "?"), task_id=getattr(ti, "task_id", "?"),
            run_id=str(context.get("run_id")), try_number=try_number, max_tries=max_tries,
            error=context.get("exception") or context.get("reason"), resolved=resolved, will_retry=will_retry,
            downstream=downstream, log_url=getattr(ti, "log_url", None))
        log.error("%s", para)
    except Exception as e:  # a callback must never raise
        log.error("mmpipeline: a task failed (and the failure summary could not be built: %s)", e)


def log_dag_failure(context: Mapping[str, Any]) -> None:
    """DAG-level on_failure_callback: which tasks failed in the run."""
    try:
        dag_run = context.get("dag_run")
        failed = []
        try:
            failed = sorted(ti.task_id for ti in dag_run.get_task_instances(state=["failed", "upstream_failed"]))
        except Exception:
            pass
        log.error("mmpipeline: DAG run %s of %s failed (%s); failed tasks: %s. Downstream tables keep their "
                  "previous version; fix the cause and clear the failed task to resume.",
                  getattr(dag_run, "run_id", "?"), getattr(context.get("dag"), "dag_id", "?"),
                  context.get("reason") or "task failure", ", ".join(failed) or "see the task logs")
    except Exception as e:
        log.error("mmpipeline: a DAG run failed (summary unavailable: %s)", e)
