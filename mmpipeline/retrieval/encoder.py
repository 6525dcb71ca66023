"""The query-side text encoder for retrieval: the embed stage's text model as ``texts -> vectors``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config


def query_encoder(cfg: "Config", versions: set[str] | None = None) -> Callable[[list[str]], np.ndarray]:
    """The embed stage's text encoder as ``texts -> vectors``, built on first use (never at import).

    ``versions``: the model versions of the stored vectors these queries are compared with. The query
    must be encoded by the same model: when the promoted (tuned) text tower is not among them (it was
    promoted after the catalog was last embedded), the frozen model is used if it is; otherwise
    :class:`ValueError` (the caller falls back to BM25 candidates)."""
    cache: dict[str, Any] = {}

    def encode(texts: list[str]) -> np.ndarray:
        if "enc" not in cache:
            from mmpipeline.embed import models
            from mmpipeline.embed.encoders import build_encoder

            spec = models.text_spec(cfg)
            if versions and spec.version not in versions:
                spec = models.text_spec(cfg, tuned=False)
                if spec.version not in versions:
                    raise ValueError(f"no text encoder of the stored vectors' version {sorted(versions)} "
                                     "(re-run embed)")
            cache["enc"] = build_encoder(spec)
        return np.asarray(cache["enc"].encode(list(texts)), dtype=np.float32)

    return encode
