"""The image tower in the MLflow model registry: ``<mlflow.model_name>-image-tower``, the version
behind the alias ``embed.tower_alias``, and the local copy of its artifact folder; likewise the
fine-tuned text tower ``<mlflow.model_name>-text-tower`` behind ``text_tune.alias``.

Used by the embed stage (look up and download; never trains) and by the tower's training stage
(register; find a version already trained on the same inputs). Imports nothing from the rest of
:mod:`mmpipeline.embed`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpipeline.tracking import client as _client

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config

log = logging.getLogger(__name__)

TOWER_ARTIFACT = "tower"  # artifact folder of the training run: config.json + state_dict.pt
FINGERPRINT_TAG = "input_fingerprint"  # model-version tag: hash of the training data and config
CONFIG_TAG = "config_fingerprint"  # model-version tag: hash of the training config only


def tower_registered_name(cfg: "Config") -> str:
    return f"{cfg.mlflow.model_name}-image-tower"


def tower_version(cfg: "Config"):
    """The registry version behind the tower alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(cfg).get_model_version_by_alias(tower_registered_name(cfg), cfg.embed.tower_alias)
    except MlflowException:
        return None


def _newest_with_fingerprint(cfg: "Config", name: str, fingerprint: str):
    """The newest version of registered model ``name`` whose tag :data:`FINGERPRINT_TAG` is
    ``fingerprint`` (trained on exactly these inputs), or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _client(cfg).search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    hits = [mv for mv in versions if (mv.tags or {}).get(FINGERPRINT_TAG) == fingerprint]
    return max(hits, key=lambda mv: int(mv.version)) if hits else None


def version_with_fingerprint(cfg: "Config", fingerprint: str):
    """The newest registered image-tower version trained on exactly these inputs, or None."""
    return _newest_with_fingerprint(cfg, tower_registered_name(cfg), fingerprint)


def set_alias(cfg: "Config", version: str) -> None:
    _client(cfg).set_registered_model_alias(tower_registered_name(cfg), cfg.embed.tower_alias, version)


def register_tower(cfg: "Config", run_id: str, result: dict[str, Any], fingerprint: str, config_fp: str) -> str:
    """Register the run's ``tower`` artifact folder as a new model version; set the alias."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(cfg)
    name = tower_registered_name(cfg)
    try:
        client.create_registered_model(name, description="image tower trained into the text-embedding space")
    except MlflowException:
        pass  # exists
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{TOWER_ARTIFACT}"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags={
        "untrained_recall_at_10": f"{result['untrained_recall_at_10']:.4f}",
        "trained_recall_at_10": f"{result['trained_recall_at_10']:.4f}",
        FINGERPRINT_TAG: fingerprint, CONFIG_TAG: config_fp})
    set_alias(cfg, str(mv.version))
    log.info("tower: registered %s version %s, alias %s", name, mv.version, cfg.embed.tower_alias)
    return str(mv.version)


def download_tower(cfg: "Config", mv) -> str:
    """Local folder with the tower's config.json and state_dict.pt (cached under the lake root)."""
    import mlflow

    dest = Path(cfg.lake.root) / "_models" / tower_registered_name(cfg) / f"v{mv.version}"
    if not (dest / TOWER_ARTIFACT / "state_dict.pt").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=TOWER_ARTIFACT, dst_path=str(dest))
    return str(dest / TOWER_ARTIFACT)


# ------------------------------------------------------------------------------ the text tower
# The domain-adapted text encoder (mmpipeline.embed.text_tune): <mlflow.model_name>-text-tower, a
# sentence-transformers folder logged under the run's TEXT_TOWER_ARTIFACT, promoted with the alias
# text_tune.alias only when it beat the frozen model on validation queries.

TEXT_TOWER_ARTIFACT = "text_tower"
PROMOTED_TAG = "promoted"  # model-version tag: "true" when the version won the validation check


def text_tower_registered_name(cfg: "Config") -> str:
    return f"{cfg.mlflow.model_name}-text-tower"


def _store_may_exist(cfg: "Config") -> bool:
    """False when the tracking store is a local sqlite file or folder that does not exist yet (nothing
    can be registered there; looking would create it)."""
    uri = cfg.mlflow.registry_uri or cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).exists()
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri.removeprefix("file://").removeprefix("file:")).exists()
    return True


def text_tower_version(cfg: "Config"):
    """The registry version behind ``text_tune.alias``, or None (none promoted, or no store yet)."""
    from mlflow.exceptions import MlflowException

    if not _store_may_exist(cfg):
        return None
    try:
        return _client(cfg).get_model_version_by_alias(text_tower_registered_name(cfg), cfg.text_tune.alias)
    except MlflowException:
        return None


def text_version_with_fingerprint(cfg: "Config", fingerprint: str):
    """The newest registered text-tower version tuned on exactly these inputs, or None."""
    return _newest_with_fingerprint(cfg, text_tower_registered_name(cfg), fingerprint)


def set_text_alias(cfg: "Config", version: str) -> None:
    _client(cfg).set_registered_model_alias(text_tower_registered_name(cfg), cfg.text_tune.alias, version)


def register_folder(cfg: "Config", name: str, artifact: str, run_id: str, tags: dict[str, str], promote: bool,
                    alias: str, description: str) -> str:
    """Register the run's ``artifact`` folder as a new version of ``name`` (tagged with ``tags`` and
    :data:`PROMOTED_TAG`); point ``alias`` at it when ``promote``. The text tower's and the adapted
    recogniser's registration."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(cfg)
    try:
        client.create_registered_model(name, description=description)
    except MlflowException:
        pass  # exists
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{artifact}"
    mv = client.create_model_version(name, source=source, run_id=run_id,
                                     tags={**tags, PROMOTED_TAG: str(bool(promote)).lower()})
    if promote:
        client.set_registered_model_alias(name, alias, str(mv.version))
    log.info("registered %s version %s%s", name, mv.version, f", alias {alias}" if promote else " (not promoted)")
    return str(mv.version)


def register_text_tower(cfg: "Config", run_id: str, tags: dict[str, str], promote: bool) -> str:
    """Register the run's ``text_tower`` artifact folder as a new version (tagged with ``tags``);
    point the alias at it when ``promote``."""
    return register_folder(cfg, text_tower_registered_name(cfg), TEXT_TOWER_ARTIFACT, run_id, tags, promote,
                           cfg.text_tune.alias, "text encoder fine-tuned on the shop's training-split queries "
                                                "(MultipleNegativesRankingLoss)")


def download_text_tower(cfg: "Config", mv) -> str:
    """Local sentence-transformers folder of a text-tower version (cached under the lake root)."""
    import mlflow

    dest = Path(cfg.lake.root) / "_models" / text_tower_registered_name(cfg) / f"v{mv.version}"
    folder = dest / TEXT_TOWER_ARTIFACT
    if not (folder / "modules.json").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=TEXT_TOWER_ARTIFACT, dst_path=str(dest))
    return str(folder)
