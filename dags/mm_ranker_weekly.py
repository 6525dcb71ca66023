"""mm_ranker_weekly: tune text tower -> re-embed text -> build training data -> train -> evaluate and
promote, when its inputs change.

Fine-tunes the text tower on training-split queries (promoted only when it beats the frozen model);
when one is promoted, ``reembed_text`` re-embeds the product and query text with it, so this run's
training data, evaluation and the scoring DAG use the tuned vectors. Then builds the (query,
product, features, label, split) table from the silver judgments/interactions and the gold
embeddings, trains the fusion ranker (MLflow run, registered as ``challenger``), evaluates it
on held-out queries against BM25, single-modality baselines and the current champion, and promotes it
to ``champion`` only if it wins by the configured margin with no regressing slice. Emits
``mmp_champion_model``, which also triggers ``mm_scoring_nightly``.

Runs when ``mm_catalog_daily`` has refreshed both ``mmp_silver_catalog`` and
``mmp_product_embeddings``, with Sundays 03:00 UTC as a fallback. ``check_inputs`` then skips the
run (a skipped task with its reason; nothing is trained or written) when the silver tables, the
embeddings and the ``rank`` settings are the same as at the last trained model; ``force`` (or
``full_refresh``) in the trigger trains anyway.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, chain

from mmpipeline.orchestration.dags import (
    START_DATE, asset, dag_tasks, default_args, log_dag_failure, run_params,
)
from mmpipeline.stages import RANKER_DAG

with DAG(
    dag_id=RANKER_DAG,
    description="Ranker: build training data -> train -> evaluate and gate/promote (when its inputs change)",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC"),
        # both, so a run starts after embed (the catalog DAG's last task), not after validate
        assets=(asset("mmp_silver_catalog") & asset("mmp_product_embeddings")),
    ),
    start_date=START_DATE,
    catchup=False,  # missed weeks are not re-trained: the newest inputs are what counts
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=12),
    default_args=default_args(),
    params=run_params(RANKER_DAG),
    tags=["mmpipeline", "ranker", "mlflow", "weekly"],
    on_failure_callback=log_dag_failure,
) as dag:
    chain(*dag_tasks(RANKER_DAG))
