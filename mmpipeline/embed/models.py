"""Which models the embed stage uses: the config's text and image models as
:class:`~mmpipeline.embed.encoders.EncoderSpec` (names and versions resolved without loading
weights, so an up-to-date run costs no model load).

For ``image_model.kind: trained-tower`` the spec is the registered tower at the configured alias
(:mod:`mmpipeline.embed.registry`). This module never trains: with no tower registered it fails
with one line naming the ``train-image-tower`` stage, or -- when ``embed.images_optional`` -- says
so and returns no image spec (text only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpipeline.embed import registry
from mmpipeline.embed.encoders import EncoderSpec, recorded_name, resolve_text_source, source_version

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


TUNED_BASE_TAG = "base_model_version"  # text-tower version tag: the frozen model it was tuned from


def text_spec(cfg: "Config", tuned: bool = True) -> EncoderSpec:
    """The text encoder spec. With ``tuned`` (and ``text_tune.use_in_embed``), the fine-tuned text
    tower promoted in the registry (``tune-text-tower``) when there is one tuned from this very model:
    same recorded name, version ``<registered name>/v<N>`` (so stored vectors are re-embedded exactly
    when the promoted version changes)."""
    m = cfg.embed.text_model
    if m.kind not in ("sentence-transformers", "transformers", "clip"):
        raise ValueError(f"embed.text_model.kind {m.kind!r} is not a text encoder")
    source = resolve_text_source(m.name)
    spec = _spec(cfg, m, "text", source, source_version(source, m.version), recorded_name(m.name))
    if tuned and cfg.text_tune.use_in_embed and m.kind == "sentence-transformers":
        mv = registry.text_tower_version(cfg)
        if mv is not None:
            base = (mv.tags or {}).get(TUNED_BASE_TAG)
            if base != spec.version:
                log.warning("embed: the promoted text tower %s v%s was tuned from %s, not the configured %s (%s); "
                            "using the frozen model (run tune-text-tower again)", registry.text_tower_registered_name(cfg),
                            mv.version, base, spec.name, spec.version)
            else:
                spec.source = registry.download_text_tower(cfg, mv)
                spec.version = f"{registry.text_tower_registered_name(cfg)}/v{mv.version}"
                spec.extra = {"run_id": mv.run_id, TUNED_BASE_TAG: base}
    return spec


def wants_trained_tower(cfg: "Config") -> bool:
    """True when the embed stage embeds images with the tower trained by ``train-image-tower``."""
    return bool(cfg.embed.embed_images and cfg.embed.image_model.kind == "trained-tower")


def image_spec(cfg: "Config") -> EncoderSpec | None:
    """The image encoder spec; for ``trained-tower`` the registered alias. None when images are
    disabled, or when no tower is registered and ``embed.images_optional`` (logged as a warning)."""
    from mmpipeline.context import StageError

    m = cfg.embed.image_model
    if not cfg.embed.embed_images:
        return None
    if m.kind == "trained-tower":
        mv = registry.tower_version(cfg)
        name = f"{registry.tower_registered_name(cfg)}@{cfg.embed.tower_alias}"
        if mv is None:
            if cfg.embed.images_optional:
                log.warning("embed: no image tower registered as %s and embed.images_optional is true: "
                            "embedding text only (run `mmpipeline run train-image-tower` to add image vectors)",
                            name)
                return None
            raise StageError(f"no image tower registered as {name}: run `mmpipeline run train-image-tower` with "
                             "the same config first (the catalog DAG's train_image_tower task), or set "
                             "embed.images_optional=true to embed text only")
        folder = registry.download_tower(cfg, mv)
        size = json.loads((Path(folder) / "config.json").read_text())["image_size"]
        spec = _spec(cfg, m, "image", folder, f"v{mv.version}", registry.tower_registered_name(cfg),
                     extra={"run_id": mv.run_id})
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
