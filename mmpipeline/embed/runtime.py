"""Where and in what precision torch code runs: device resolution, dtypes and autocast.

The lowest layer of :mod:`mmpipeline.embed`: imports nothing from the package (torch lazily).
"""

from __future__ import annotations

import contextlib


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; an explicit ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("embed.device is 'cuda' but no CUDA device is available")
    return device


def torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def autocast(device: str, dtype: str):
    """Mixed precision for fp16/bf16; a no-op context for fp32."""
    import torch

    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch_dtype(dtype))
