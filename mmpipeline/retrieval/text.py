"""The text retrieval sees: one tokenizer and ONE definition of a product's BM25 text.

Candidate generation (score), evaluation's candidate set and the ranker's ``bm25`` features (rank)
all index :func:`product_text`, so the lexical candidates scored at night are the ones the
promotion gate measured and the ones the ranker was trained on.
"""

from __future__ import annotations

import re

import pandas as pd

_TOKEN = re.compile(r"[a-z0-9]+")

# canonical silver.products columns joined into the BM25 text, in this order, where the source
# config maps them (a column that is absent or null contributes nothing)
BM25_FIELDS = ("title", "brand", "category_path", "description")


def tokenize(text: str | None) -> list[str]:
    """Lower-case alphanumeric runs: the tokens of BM25 and of the title-coverage feature."""
    return _TOKEN.findall((text or "").lower())


def product_text(products: pd.DataFrame) -> pd.Series:
    """The text BM25 indexes: title, brand, category path and description where present."""
    parts = [products[c].fillna("").astype(str) for c in BM25_FIELDS if c in products.columns]
    if not parts:
        raise ValueError(f"products have none of the BM25 text columns {list(BM25_FIELDS)}")
    text = parts[0]
    for p in parts[1:]:
        text = text + " " + p
    return text.str.strip()
