"""The image tower's network and its on-disk folder (``config.json`` + ``state_dict.pt``).

Inference-side: the ``trained-tower`` image encoder loads it; training lives in
:mod:`mmpipeline.embed.tower.train`, which imports this module (never the other way round).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmpipeline.embed.backbones import build_torchvision_backbone


def _nn():
    import torch.nn as nn

    return nn


class ImageTower(_nn().Module):
    """torchvision backbone (classifier removed) -> MLP projection -> L2-normalised vector."""

    def __init__(self, arch: str = "resnet18", out_dim: int = 384, hidden: int = 512, weights: str | None = None,
                 seed: int = 0):
        import torch.nn as nn

        super().__init__()
        self.backbone, feat = build_torchvision_backbone(arch, weights, seed=seed)
        self.proj = nn.Sequential(nn.Linear(feat, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x):
        import torch.nn.functional as F

        return F.normalize(self.proj(self.backbone(x)), dim=-1)


def save_tower(model: ImageTower, tcfg: dict[str, Any], folder: str | Path) -> Path:
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "state_dict.pt")
    (folder / "config.json").write_text(json.dumps(tcfg, indent=2, sort_keys=True))
    return folder


def load_tower(folder: str | Path) -> tuple[ImageTower, dict[str, Any]]:
    import torch

    folder = Path(folder)
    tcfg = json.loads((folder / "config.json").read_text())
    model = ImageTower(tcfg["arch"], tcfg["out_dim"], tcfg["hidden"])
    model.load_state_dict(torch.load(folder / "state_dict.pt", map_location="cpu", weights_only=True))
    return model.eval(), tcfg
