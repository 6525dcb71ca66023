"""One heavy state per process: what a Spark Python worker loads for a stage (featuriser, indexes,
model) and reuses across the partitions of that stage.

Spark reuses its Python workers across stages of one session, and a module-level cache per stage kept
the previous stage's state alive: after build-training-data each worker still held its featuriser
and hard-negative index (about 5 GB per worker at 1M products) while it loaded the score stage's.
Every stage's worker state goes through :func:`get_or_load`, which holds exactly one state per
process: loading a new one drops the old one first.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_SLOT: dict[str, Any] = {}


def get_or_load(key: str, load: Callable[[], T]) -> T:
    """The state cached under ``key``, else ``load()`` after dropping whatever state this process held."""
    if key in _SLOT:
        return _SLOT[key]
    if _SLOT:
        _SLOT.clear()
        gc.collect()
    value = load()
    _SLOT.clear()
    _SLOT[key] = value
    return value


def held() -> list[str]:
    """Keys of the state this process holds (at most one)."""
    return list(_SLOT)
