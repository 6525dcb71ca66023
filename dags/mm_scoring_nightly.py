"""mm_scoring_nightly: score -> validate output and publish, nightly at 05:00 UTC and on fresh inputs.

Scores the head queries' candidates (embedding top-K union BM25 top-K over the whole catalog) with the
model registered as ``champion`` (or the ``model_alias`` param) into ``gold.search_ranking`` and
``gold.product_vectors`` for the run date, then validates the ranking (Great Expectations) and only
then marks it the current index version: a failed check leaves the previous version current.

Besides its schedule it runs when fresh embeddings land (``mmp_product_embeddings`` from
``mm_catalog_daily``) or the ranker DAG has evaluated a champion (``mmp_champion_model``); such runs
take the config and run date of the upstream run that emitted the asset event.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, chain

from _mmp_common import (
    CHAMPION_MODEL, PRODUCT_EMBEDDINGS, SEARCH_RANKING, START_DATE, default_args, log_dag_failure, resolve_task,
    run_params, stage_task,
)

with DAG(
    dag_id="mm_scoring_nightly",
    description="Scoring: score -> validate output -> publish (champion model)",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 5 * * *", timezone="UTC"),
        assets=(PRODUCT_EMBEDDINGS | CHAMPION_MODEL),
    ),
    start_date=START_DATE,
    catchup=False,  # the index serves the newest ranking; older ones are kept by Delta time travel
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=6),
    default_args=default_args(),
    params=run_params(),
    tags=["mmpipeline", "scoring", "spark", "nightly"],
    on_failure_callback=log_dag_failure,
) as dag:
    resolved = resolve_task()
    chain(
        resolved,
        stage_task("score", resolved),
        stage_task("publish", resolved, outlets=[SEARCH_RANKING], task_display_name="validate output -> publish"),
    )
