"""The one list of pipeline stages: what runs, where it runs, what it reads and writes.

Everything that names stages is derived from :data:`STAGES`:

* ``mmpipeline run STAGE`` (``cli.STAGES``: stage name -> ``"module:function"``);
* ``jobs/<job>.py``, the spark-submit entry points (three lines each, calling ``cli.job_main``);
* the Airflow DAGs (``dags/mm_*.py``): each builds its tasks from :func:`dag_stages`, in this order,
  with the assets below as task outlets/inlets (:mod:`mmpipeline.orchestration.dags`).

Adding a stage: one :class:`Stage` entry here (in the order it runs in its DAG) plus
``jobs/<name_with_underscores>.py`` copied from another job file; ``tests/dags`` checks the rest.

This module imports only the standard library: DAG files import it at parse time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

CATALOG_DAG = "mm_catalog_daily"
RANKER_DAG = "mm_ranker_weekly"
SCORING_DAG = "mm_scoring_nightly"
DAG_IDS = (CATALOG_DAG, RANKER_DAG, SCORING_DAG)


@dataclass(frozen=True)
class AssetSpec:
    """A logical dataset the DAGs hand over to each other (an Airflow Asset at parse time).

    The URI names the table or registered model, not a path: the physical location depends on the
    config's lake root. ``tables`` are the lake tables behind it (what an input fingerprint reads);
    an asset with ``model_alias`` stands for the registered model version behind that alias.
    """

    name: str
    uri: str
    tables: tuple[str, ...] = ()
    model_alias: str | None = None
    note: str = ""


ASSETS: dict[str, AssetSpec] = {a.name: a for a in [
    AssetSpec("mmp_silver_catalog", "x-mmpipeline://lake/silver/products",
              ("silver.products", "silver.queries", "silver.judgments", "silver.interactions")),
    AssetSpec("mmp_image_tower", "x-mmpipeline://mlflow/image-tower/champion",
              note="registered model <mlflow.model_name>-image-tower"),
    AssetSpec("mmp_text_tower", "x-mmpipeline://mlflow/text-tower/champion",
              note="registered model <mlflow.model_name>-text-tower (reembed-text and embed re-embed when it is promoted)"),
    AssetSpec("mmp_asr_model", "x-mmpipeline://mlflow/asr/champion",
              note="registered model <mlflow.model_name>-asr (transcribe recognises with it when it is promoted)"),
    AssetSpec("mmp_voice_transcripts", "x-mmpipeline://lake/gold/voice_transcripts",
              ("gold.voice_transcripts", "gold.voice_features")),
    AssetSpec("mmp_product_embeddings", "x-mmpipeline://lake/gold/product_embeddings",
              ("gold.product_embeddings", "gold.query_embeddings")),
    AssetSpec("mmp_training_data", "x-mmpipeline://lake/gold/training_data", ("gold.training_data",)),
    AssetSpec("mmp_champion_model", "x-mmpipeline://mlflow/ranker/champion", model_alias="champion",
              note="registered model <mlflow.model_name>, alias champion"),
    AssetSpec("mmp_search_ranking", "x-mmpipeline://lake/gold/search_ranking",
              ("gold.search_ranking", "gold.product_vectors")),
]}


@dataclass(frozen=True)
class Stage:
    """One stage: ``mmpipeline run NAME`` runs ``entry`` (``run(ctx: RunContext) -> dict``)."""

    name: str
    entry: str  # "module:function"
    dag: str  # the DAG whose task runs it
    spark: bool  # True: spark-submit jobs/<job>; False: the CLI in a subprocess of the worker (torch only)
    timeout: dt.timedelta
    doc: str  # one line
    inputs: tuple[str, ...] = ()  # asset names (task inlets)
    outputs: tuple[str, ...] = ()  # asset names (task outlets: their events trigger other DAGs)
    task_id_: str | None = None  # the Airflow task id when it is not the stage name with underscores
    display_name: str | None = None
    # trigger params (besides config/run_date/full_refresh/model_alias/overrides) this stage accepts
    trigger_params: tuple[str, ...] = field(default=())

    @property
    def task_id(self) -> str:
        return self.task_id_ or self.name.replace("-", "_")

    @property
    def job(self) -> str:
        """File name of its spark-submit entry point under ``jobs/``."""
        return self.name.replace("-", "_") + ".py"


_H = dt.timedelta(hours=1)
S, R, N = CATALOG_DAG, RANKER_DAG, SCORING_DAG

# In run order within each DAG (each DAG is a straight chain of its stages).
STAGES: dict[str, Stage] = {s.name: s for s in [
    # ---- mm_catalog_daily: sources -> bronze -> silver -> checks -> tower -> voice -> embeddings
    Stage("ingest", "mmpipeline.ingest:run", S, True, 1 * _H,
          "Sources (CSV/JSON/Parquet) -> bronze.* Delta tables with ingest metadata."),
    Stage("clean", "mmpipeline.clean.stage:run", S, True, 2 * _H,
          "bronze.* -> silver.* (normalised, de-duplicated, image checks); rejects -> quarantine.*.",
          trigger_params=("allow_empty_source",)),
    Stage("validate", "mmpipeline.validate:run", S, True, 1 * _H,
          "Great Expectations suites on silver.*; a failed critical expectation fails the task.",
          outputs=("mmp_silver_catalog",)),
    Stage("train-image-tower", "mmpipeline.embed.tower.train:run", S, False, 4 * _H,
          "Contrastive image tower into the text-embedding space, registered in MLflow; a no-op when images "
          "are off or a tower for the same inputs is registered.",
          inputs=("mmp_silver_catalog",), outputs=("mmp_image_tower",)),
    Stage("tune-asr", "mmpipeline.voice.adapt:run", S, False, 3 * _H,
          "Whisper's encoder fine-tuned on train-split queries spoken by espeak-ng voices, registered in MLflow; "
          "promoted only when it lowers the word error rate; a no-op when voice.adapt is off or inputs are unchanged.",
          inputs=("mmp_silver_catalog",), outputs=("mmp_asr_model",)),
    Stage("transcribe", "mmpipeline.voice.stage:run", S, False, 2 * _H,
          "Voice queries: decode, resample, features, Whisper (the promoted adapted one when there is one) -> "
          "gold.voice_transcripts / gold.voice_features (incremental by audio hash and recogniser version).",
          inputs=("mmp_silver_catalog", "mmp_asr_model"), outputs=("mmp_voice_transcripts",)),
    Stage("embed", "mmpipeline.embed.job:run", S, True, 4 * _H,
          "Incremental text/image/query embeddings -> gold.*_embeddings (never trains).",
          inputs=("mmp_silver_catalog", "mmp_image_tower", "mmp_text_tower"), outputs=("mmp_product_embeddings",)),
    # ---- mm_ranker_weekly: text tower -> re-embed text -> training data -> train -> evaluate/promote
    Stage("tune-text-tower", "mmpipeline.embed.text_tune:run", R, False, 2 * _H,
          "Fine-tune the text encoder on training-split queries, register it in MLflow; promoted only when it "
          "beats the frozen model (reembed-text re-embeds with it); a no-op for unchanged inputs.",
          inputs=("mmp_silver_catalog",), outputs=("mmp_text_tower",)),
    Stage("reembed-text", "mmpipeline.embed.text_tune:reembed", R, False, 2 * _H,
          "Re-embed product and query text with a text tower promoted this run, so training and scoring use "
          "it the same night (incremental, text only; a no-op when nothing new was promoted).",
          inputs=("mmp_silver_catalog", "mmp_text_tower", "mmp_product_embeddings")),
    Stage("build-training-data", "mmpipeline.rank.data:run", R, True, 2 * _H,
          "Judgments + interactions + negatives -> gold.training_data.",
          inputs=("mmp_silver_catalog", "mmp_product_embeddings"), outputs=("mmp_training_data",)),
    Stage("train", "mmpipeline.rank.train:run", R, False, 6 * _H,
          "Fusion ranker training, registered in MLflow with alias 'challenger'.",
          inputs=("mmp_training_data",)),
    Stage("evaluate", "mmpipeline.rank.evaluate:run", R, False, 2 * _H,
          "Evaluate the challenger against baselines and the champion; promote it if it wins.",
          inputs=("mmp_training_data",), outputs=("mmp_champion_model",),
          task_id_="evaluate_and_promote", display_name="evaluate -> gate/promote"),
    # ---- mm_scoring_nightly: score with the champion -> validate output -> publish
    Stage("score", "mmpipeline.score.job:run", N, True, 3 * _H,
          "Head queries x candidates scored by the champion -> gold.search_ranking.",
          inputs=("mmp_silver_catalog", "mmp_product_embeddings", "mmp_voice_transcripts", "mmp_champion_model")),
    Stage("publish", "mmpipeline.score.publish:run", N, True, 1 * _H,
          "Validate the ranking (Great Expectations), then mark it the current index version.",
          outputs=("mmp_search_ranking",), display_name="validate output -> publish",
          trigger_params=("force",)),
]}
del S, R, N

# Trigger params beyond the common five, with the stage option or flag each becomes (see cli.py):
# ``force`` -> ``--param force=true`` (publish: publish a run date older than the one served);
# ``allow_empty_source`` -> ``--allow-empty-source`` (clean: accept a source with no records).
TRIGGER_PARAMS: dict[str, tuple[str, ...]] = {
    "force": ("--param", "force=true"),
    "allow_empty_source": ("--allow-empty-source",),
}


def dag_stages(dag_id: str) -> list[Stage]:
    """The stages of one DAG, in run order."""
    if dag_id not in DAG_IDS:
        raise KeyError(f"unknown DAG {dag_id!r}; DAGs: {', '.join(DAG_IDS)}")
    return [s for s in STAGES.values() if s.dag == dag_id]


def by_task_id(task_id: str) -> Stage | None:
    return next((s for s in STAGES.values() if s.task_id == task_id), None)


def by_job(job_file: str) -> Stage:
    """The stage whose ``jobs/`` entry point is ``job_file`` (a path or a file name)."""
    name = job_file.replace("\\", "/").rsplit("/", 1)[-1]
    for s in STAGES.values():
        if s.job == name:
            return s
    raise KeyError(f"jobs/{name} is not the entry point of any stage in mmpipeline/stages.py")


def external_inputs(dag_id: str) -> list[AssetSpec]:
    """Assets a DAG's stages read that no stage of the same DAG writes: what a run of it depends on."""
    stages = dag_stages(dag_id)
    own = {a for s in stages for a in s.outputs}
    names = dict.fromkeys(a for s in stages for a in s.inputs if a not in own)
    return [ASSETS[a] for a in names]

