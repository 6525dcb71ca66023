"""Which models the embed stage uses: specs from the config (names and versions resolved without
loading weights, so an up-to-date run costs no model load), and the image tower in the MLflow
registry (``<mlflow.model_name>-image-tower`` at alias ``embed.tower_alias``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpipeline.embed.encoders import EncoderSpec, recorded_name, resolve_text_source, source_version
from mmpipeline.tracking import client as _client
from mmpipeline.tracking import setup_mlflow  # noqa: F401 (used by mmpipeline.embed.tower)

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config, EmbedModelConfig

log = logging.getLogger(__name__)


def _spec(cfg: "Config", m: "EmbedModelConfig", modality: str, source: str, version: str, name: str,
          **kw: Any) -> EncoderSpec:
    ec = cfg.embed
    return EncoderSpec(kind=m.kind, name=name, source=source, version=version, modality=modality,
                       weights=m.weights, device=ec.device, dtype=ec.dtype,
                       batch_size=ec.batch_size if modality == "text" else ec.image_batch_size,
                       max_length=ec.max_text_length, image_size=ec.image_size, normalize=ec.normalize, **kw)


def text_spec(cfg: "Config") -> EncoderSpec:
    m = cfg.embed.text_model
    if m.kind not in ("sentence-transformers", "transformers", "clip"):
        raise ValueError(f"embed.text_model.kind {m.kind!r} is not a text encoder")
    source = resolve_text_source(m.name)
    return _spec(cfg, m, "text", source, source_version(source, m.version), recorded_name(m.name))


def tower_registered_name(cfg: "Config") -> str:
    return f"{cfg.mlflow.model_name}-image-tower"


def register_tower(cfg: "Config", run_id: str, result: dict[str, Any]) -> str:
    """Register the run's ``tower`` artifact folder as a new model version; set the alias."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mmpipeline.embed.tower import TOWER_ARTIFACT

    client = _client(cfg)
    name = tower_registered_name(cfg)
    try:
        client.create_registered_model(name, description="image tower trained into the text-embedding space")
    except MlflowException:
        pass  # exists
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{TOWER_ARTIFACT}"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags={
        "untrained_recall_at_10": f"{result['untrained_recall_at_10']:.4f}",
        "trained_recall_at_10": f"{result['trained_recall_at_10']:.4f}"})
    client.set_registered_model_alias(name, cfg.embed.tower_alias, mv.version)
    log.info("tower: registered %s version %s, alias %s", name, mv.version, cfg.embed.tower_alias)
    return str(mv.version)


def tower_version(cfg: "Config"):
    """The registry version behind the tower alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(cfg).get_model_version_by_alias(tower_registered_name(cfg), cfg.embed.tower_alias)
    except MlflowException:
        return None


def download_tower(cfg: "Config", mv) -> str:
    """Local folder with the tower's config.json and state_dict.pt (cached under the lake root)."""
    import mlflow

    from mmpipeline.embed.tower import TOWER_ARTIFACT

    dest = Path(cfg.lake.root) / "_models" / tower_registered_name(cfg) / f"v{mv.version}"
    if not (dest / TOWER_ARTIFACT / "state_dict.pt").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=TOWER_ARTIFACT, dst_path=str(dest))
    return str(dest / TOWER_ARTIFACT)


def image_spec(cfg: "Config", ctx=None) -> EncoderSpec | None:
    """The image encoder spec; for ``trained-tower`` the registered alias (trained first when it is
    missing and ``embed.train_tower_if_missing``); None when images are disabled."""
    m = cfg.embed.image_model
    if not cfg.embed.embed_images:
        return None
    if m.kind == "trained-tower":
        mv = tower_version(cfg)
        if mv is None:
            if not (cfg.embed.train_tower_if_missing and ctx is not None):
                from mmpipeline.context import StageError

                raise StageError(f"no image tower registered as {tower_registered_name(cfg)}@{cfg.embed.tower_alias}: "
                                 "run `mmpipeline run train-image-tower` first")
            from mmpipeline.embed import tower

            log.info("embed: no image tower registered yet; training one now")
            tower.run(ctx)
            mv = tower_version(cfg)
        import json

        folder = download_tower(cfg, mv)
        size = json.loads((Path(folder) / "config.json").read_text())["image_size"]
        spec = _spec(cfg, m, "image", folder, f"v{mv.version}", tower_registered_name(cfg), extra={"run_id": mv.run_id})
        spec.image_size = int(size)
        return spec
    if m.kind == "torchvision":
        version = m.version or (f"{m.weights}" if m.weights and not Path(m.weights).exists() else
                                (source_version(m.weights, None) if m.weights else "random-init-seed0"))
        return _spec(cfg, m, "image", m.name, version, m.name)
    if m.kind == "clip":
        source = str(Path(m.name).resolve()) if Path(m.name).exists() else m.name
        return _spec(cfg, m, "image", source, source_version(source, m.version), recorded_name(m.name))
    raise ValueError(f"embed.image_model.kind {m.kind!r} is not an image encoder")
