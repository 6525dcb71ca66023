"""Query keys shared by clean (which writes them), rank and score (which look them up).

``query_id_for(normalize_query(text))`` is the id the clean stage writes into ``silver.queries``
and ``silver.judgments`` (Spark: ``mmpipeline.clean.transforms.query_id_col``, the first 16 hex
digits of sha256(query_norm)); a test checks both give the same ids.
"""

from __future__ import annotations

import hashlib

QUERY_ID_HEX_DIGITS = 16


def normalize_query(text: str | None) -> str:
    """Canonical query text, exactly as the clean stage writes ``query_norm`` ('' for no text)."""
    from mmpipeline.clean.text import normalize_query as _clean_norm  # the one normaliser (pure Python)

    return _clean_norm(text) or ""


def query_id_for(query_norm: str) -> str:
    """The clean stage's query id: the first 16 hex digits of sha256(query_norm)."""
    return hashlib.sha256(query_norm.encode("utf-8")).hexdigest()[:QUERY_ID_HEX_DIGITS]
