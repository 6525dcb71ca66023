"""mm_catalog_daily: ingest -> clean -> validate -> train-image-tower -> transcribe -> embed, every night at 01:00 UTC.

Brings the catalog, queries and judgments into the lake (bronze -> silver), checks them with Great
Expectations (a failed critical expectation stops the run before anything downstream changes),
trains the image tower when the config embeds images with it (a no-op when a tower for the same
inputs is registered, or images are off), recognises new or changed voice clips (``transcribe``:
Whisper, catalog-aware; a no-op without a ``voice_queries`` source) and embeds only new or changed
products and queries (the embed task never trains). Emits the ``mmp_silver_catalog``,
``mmp_image_tower``, ``mmp_voice_transcripts`` and ``mmp_product_embeddings`` assets; the last also
triggers ``mm_scoring_nightly``, so the scoring run ranks today's voice queries too.

Manual trigger (UI "Trigger" form or REST ``conf``): ``config``, ``run_date``, ``full_refresh``,
``model_alias``, ``overrides``. See ``dags/_mmp_common.py`` for how stages run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, CronTriggerTimetable, chain

from _mmp_common import (
    IMAGE_TOWER, PRODUCT_EMBEDDINGS, SILVER_CATALOG, START_DATE, VOICE_TRANSCRIPTS, default_args, log_dag_failure,
    resolve_task,
    run_params, stage_task,
)

with DAG(
    dag_id="mm_catalog_daily",
    description="Catalog: ingest -> clean -> validate -> train-image-tower -> transcribe -> embed (incremental)",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("0 1 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,  # ingest reads the sources as they are now: back-filling old dates would not reproduce them
    max_active_runs=1,  # runs write the same Delta tables
    dagrun_timeout=dt.timedelta(hours=8),
    default_args=default_args(),
    params=run_params(),
    tags=["mmpipeline", "catalog", "spark", "daily"],
    on_failure_callback=log_dag_failure,
) as dag:
    resolved = resolve_task()
    chain(
        resolved,
        stage_task("ingest", resolved),
        stage_task("clean", resolved),
        stage_task("validate", resolved, outlets=[SILVER_CATALOG]),
        stage_task("train-image-tower", resolved, outlets=[IMAGE_TOWER]),
        stage_task("transcribe", resolved, outlets=[VOICE_TRANSCRIPTS]),
        stage_task("embed", resolved, outlets=[PRODUCT_EMBEDDINGS], inlets=[IMAGE_TOWER]),
    )
