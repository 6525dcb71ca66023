"""Vectorised pandas UDFs wrapping the scalar cleaning functions of :mod:`mmpipeline.clean.text`.

(No ``from __future__ import annotations`` here: Spark reads these type hints at definition time.)
"""

import pandas as pd
from pyspark.sql.functions import pandas_udf

from mmpipeline.clean.text import clean_text, normalize_query, parse_price


@pandas_udf("string")
def clean_text_udf(s: pd.Series) -> pd.Series:
    return s.map(clean_text, na_action="ignore")


@pandas_udf("string")
def normalize_query_udf(s: pd.Series) -> pd.Series:
    return s.map(normalize_query, na_action="ignore")


@pandas_udf("price double, currency string, error string, detail string")
def parse_price_udf(s: pd.Series, max_price: pd.Series) -> pd.DataFrame:
    mp = float(max_price.iloc[0]) if len(max_price) else 1e6
    rows = [parse_price(v, mp) if isinstance(v, str) else (None, None, None, None) for v in s]
    return pd.DataFrame(rows, columns=["price", "currency", "error", "detail"])
