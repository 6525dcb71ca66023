"""The query-side text encoder for retrieval: the embed stage's text model as ``texts -> vectors``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config


def query_encoder(cfg: "Config") -> Callable[[list[str]], np.ndarray]:
    """The embed stage's text encoder as ``texts -> vectors``, built on first use (never at import)."""
    cache: dict[str, Any] = {}

    def encode(texts: list[str]) -> np.ndarray:
        if "enc" not in cache:
            from mmpipeline.embed import models
            from mmpipeline.embed.encoders import build_encoder

            cache["enc"] = build_encoder(models.text_spec(cfg))
        return np.asarray(cache["enc"].encode(list(texts)), dtype=np.float32)

    return encode
