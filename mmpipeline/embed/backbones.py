"""torchvision backbones with their classification head removed (used by the ``torchvision`` image
encoder and as the trunk of the image tower). Imports nothing from :mod:`mmpipeline.embed`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def strip_classifier(model) -> tuple[Any, int]:
    """Replace a torchvision model's classification head by Identity; returns (model, feature dim)."""
    import torch.nn as nn

    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model, head.in_features
        if isinstance(head, nn.Sequential):
            linears = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if linears:
                i = linears[-1]
                dim = head[i].in_features
                head[i] = nn.Identity()
                if i == 0:  # e.g. classifier = Sequential(Linear): all identity
                    setattr(model, attr, nn.Identity())
                return model, dim
    raise ValueError(f"do not know how to remove the classifier of {type(model).__name__}")


def build_torchvision_backbone(arch: str, weights: str | None = None, seed: int = 0):
    """A torchvision model without its classifier. ``weights``: None (random init, seeded), a
    torchvision weights name (e.g. ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``; needs the
    file in the torch hub cache offline) or a local state-dict file."""
    import torch
    import torchvision

    w = None
    if weights and not Path(weights).exists():
        w = weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=w)
    if weights and Path(weights).exists():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            log.warning("torchvision %s: %d missing keys loading %s", arch, len(missing), weights)
    return strip_classifier(model)
