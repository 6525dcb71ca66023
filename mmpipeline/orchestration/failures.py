"""Failure text an operator can act on: one paragraph per failed task, one line per failed DAG run.

:func:`failure_paragraph` is pure; the two callbacks read the Airflow context and never raise.
"""

from __future__ import annotations

import logging
import shlex
from typing import Any, Iterable, Mapping

from mmpipeline.orchestration.runs import stage_argv
from mmpipeline.stages import by_task_id

log = logging.getLogger("mmpipeline.airflow")


def failure_paragraph(*, dag_id: str, task_id: str, run_id: str, try_number: int | None, max_tries: int | None,
                      error: Any, resolved: Mapping[str, Any] | None, will_retry: bool,
                      downstream: Iterable[str] = (), log_url: str | None = None) -> str:
    """One readable paragraph about a failed task: what, where, why, what happens next, how to re-run."""
    resolved = resolved or {}
    stage = by_task_id(task_id)
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
    argv = stage_argv(resolved, task_id)
    rerun = (f" To reproduce it outside Airflow: mmpipeline run {stage.name} {shlex.join(argv)}."
             if argv and stage is not None else "")
    url = f" Log: {log_url}." if log_url else ""
    return (f"mmpipeline: task {dag_id}.{task_id} failed on {attempt} (run {run_id}, {where}). "
            f"Error: {err}. {nxt}{rerun}{url}")


def log_failure_summary(context: Mapping[str, Any]) -> None:
    """on_failure_callback / on_retry_callback: log one paragraph that an operator can act on."""
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
