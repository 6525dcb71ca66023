"""mm_scoring_nightly: score -> validate output and publish, once a night (fresh inputs, 05:00 UTC fallback).

Scores the head queries' candidates (embedding top-K union BM25 top-K over the whole catalog) with the
model registered as ``champion`` (or the ``model_alias`` param) into ``gold.search_ranking`` and
``gold.product_vectors`` for the run date, then validates the ranking (Great Expectations) and only
then marks it the current index version: a failed check leaves the previous version current.

Runs when fresh embeddings land (``mmp_product_embeddings`` from ``mm_catalog_daily``) or the ranker
DAG has promoted a new champion (``mmp_champion_model``); such runs take the config and run date of
the upstream run. The 05:00 UTC cron is a fallback for nights without an upstream event:
``check_inputs`` skips a run (a skipped task with its reason) when the run date was already scored
and published from the same embeddings, catalog, voice transcripts, champion version and ``score``
settings, so the cron run after the asset-triggered one does nothing. ``force`` re-runs anyway.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, chain

from mmpipeline.orchestration.dags import (
    START_DATE, asset, dag_tasks, default_args, log_dag_failure, run_params,
)
from mmpipeline.stages import SCORING_DAG

with DAG(
    dag_id=SCORING_DAG,
    description="Scoring: score -> validate output -> publish (champion model), once per run date",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 5 * * *", timezone="UTC"),
        assets=(asset("mmp_product_embeddings") | asset("mmp_champion_model")),
    ),
    start_date=START_DATE,
    catchup=False,  # the index serves the newest ranking; older ones are kept by Delta time travel
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=6),
    default_args=default_args(),
    params=run_params(SCORING_DAG),
    tags=["mmpipeline", "scoring", "spark", "nightly"],
    on_failure_callback=log_dag_failure,
) as dag:
    chain(*dag_tasks(SCORING_DAG))
