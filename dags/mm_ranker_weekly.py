"""mm_ranker_weekly: build training data -> train -> evaluate and promote, Sundays at 03:00 UTC.

Builds the (query, product, features, label, split) table from the silver judgments/interactions and
the gold embeddings, trains the fusion ranker (MLflow run, registered as ``challenger``), evaluates it
on held-out queries against BM25, single-modality baselines and the current champion, and promotes it
to ``champion`` only if it wins by the configured margin with no regressing slice. Emits
``mmp_champion_model``, which also triggers ``mm_scoring_nightly``.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, CronTriggerTimetable, chain

from _mmp_common import (
    CHAMPION_MODEL, START_DATE, TRAINING_DATA, default_args, log_dag_failure, resolve_task, run_params, stage_task,
)

with DAG(
    dag_id="mm_ranker_weekly",
    description="Ranker: build training data -> train -> evaluate and gate/promote",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("0 3 * * 0", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,  # one model per week is enough: missed weeks are not re-trained
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=12),
    default_args=default_args(),
    params=run_params(),
    tags=["mmpipeline", "ranker", "mlflow", "weekly"],
    on_failure_callback=log_dag_failure,
) as dag:
    resolved = resolve_task()
    chain(
        resolved,
        stage_task("build-training-data", resolved, outlets=[TRAINING_DATA]),
        stage_task("train", resolved),
        stage_task("evaluate", resolved, task_id="evaluate_and_promote", outlets=[CHAMPION_MODEL],
                   task_display_name="evaluate -> gate/promote"),
    )
