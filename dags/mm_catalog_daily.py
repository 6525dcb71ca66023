"""mm_catalog_daily: ingest -> clean -> validate -> train-image-tower -> tune-asr -> transcribe -> embed, every night at 01:00 UTC.

Brings the catalog, queries and judgments into the lake (bronze -> silver), checks them with Great
Expectations (a failed critical expectation stops the run before anything downstream changes),
trains the image tower when the config embeds images with it (a no-op when a tower for the same
inputs is registered, or images are off), recognises new or changed voice clips (``transcribe``:
Whisper, catalog-aware; a no-op without a ``voice_queries`` source) and embeds only new or changed
products and queries (the embed task never trains). Emits the ``mmp_silver_catalog``,
``mmp_image_tower``, ``mmp_voice_transcripts`` and ``mmp_product_embeddings`` assets; the last
triggers ``mm_scoring_nightly`` and, with ``mmp_silver_catalog``, ``mm_ranker_weekly``.

Manual trigger (UI "Trigger" form or REST ``conf``): ``config``, ``run_date``, ``full_refresh``,
``model_alias``, ``overrides``, ``allow_empty_source``. The tasks come from the stage registry
(``mmpipeline/stages.py``); how they run: ``mmpipeline/orchestration/dags.py``.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, CronTriggerTimetable, chain

from mmpipeline.orchestration.dags import START_DATE, dag_tasks, default_args, log_dag_failure, run_params
from mmpipeline.stages import CATALOG_DAG

with DAG(
    dag_id=CATALOG_DAG,
    description="Catalog: ingest -> clean -> validate -> train-image-tower -> tune-asr -> transcribe -> embed (incremental)",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("0 1 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,  # ingest reads the sources as they are now: back-filling old dates would not reproduce them
    max_active_runs=1,  # runs write the same Delta tables
    dagrun_timeout=dt.timedelta(hours=8),
    default_args=default_args(),
    params=run_params(CATALOG_DAG),
    tags=["mmpipeline", "catalog", "spark", "daily"],
    on_failure_callback=log_dag_failure,
) as dag:
    chain(*dag_tasks(CATALOG_DAG))
