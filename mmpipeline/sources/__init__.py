"""Source adapters: read an input and map it onto the canonical columns of its entity.

An adapter is ``read(spark, entity, src, upstream) -> DataFrame`` returning the entity's canonical
columns (all strings, see :data:`mmpipeline.schemas.ENTITY_COLUMNS`) plus ``_source_file``,
``_row_id``, ``_raw`` and ``_corrupt_record``. ``upstream`` holds the bronze frames of entities
ingested earlier in the same run (products are ingested first), for derived sources.

Adapters (``sources.<entity>.adapter`` in the config):

* ``generic`` (default): CSV / JSON Lines / Parquet driven only by the config's column mapping
  (:mod:`mmpipeline.sources.generic`). A new retailer's export loads by writing a config.
* ``attribute_queries``: attribute queries with graded judgments generated from catalog attributes
  (:mod:`mmpipeline.sources.attribute_queries`), for catalogs that ship no queries.

Add an adapter by registering ``"name": "module:function"`` in :data:`ADAPTERS`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

ADAPTERS: dict[str, str] = {
    "generic": "mmpipeline.sources.generic:read",
    "attribute_queries": "mmpipeline.sources.attribute_queries:read",
}

# products first: derived sources (attribute_queries) read the products ingested in the same run
ENTITY_ORDER = ["products", "queries", "judgments", "interactions", "voice_queries"]

CORRUPT_COL = "_corrupt_record"
META_COLS = ["_source_file", "_row_id", "_raw", CORRUPT_COL]


def get_adapter(name: str) -> Callable[..., Any]:
    if name not in ADAPTERS:
        from mmpipeline.context import StageError

        raise StageError(f"unknown source adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    module, _, func = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), func)
