"""Near-duplicate collapse: one listing per group of identical products in a published ranking.

Catalogs carry the same listing under several product ids (re-listed items, per-store copies): for
'ceiling mounted lighting fixures' the Home Depot sample ranked the same title at 2-3 and 4-5. The
score stage groups such products and keeps, per query, only the best-scored member of each group;
the others go to ``gold.search_duplicates`` with the group id and the product shown in their place,
so the online index can expand a result to its duplicates.

* :func:`title_key` the normalised title: lower case, every run of characters that is neither a
  letter nor a digit becomes one space, trimmed. :data:`TITLE_KEY_SQL` is the same in Spark SQL
  (the publish gate, :mod:`mmpipeline.score.checks`, checks the published rows with it).
* :func:`duplicate_groups` product id -> group id for products sharing a key: the normalised title
  and, with ``score.collapse_key: title_image`` (the default), the image content hash where the
  product has one (same title but a different photo -- another colour, say -- is another product).
* :func:`collapse` per query: the best-scored member of each group stays (ties by product id),
  ranks are renumbered 1..n, the top ``k`` kept; returns the kept rows and the collapsed ones.
* :func:`collapse_spark` the same on a Spark DataFrame (the spark scoring engine).

All pure; configured by ``score.collapse_duplicates`` (on by default), ``score.collapse_key`` and
``score.collapse_check_k`` (the gate's top-k).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import pandas as pd

DUPLICATES = "gold.search_duplicates"
DUPLICATE_COLUMNS = ["query_id", "product_id", "group_id", "shown_product_id", "shown_rank", "score"]

_NON_WORD = re.compile(r"[\W_]+")
# Spark SQL form of title_key (Java regex: \p{L} letters, \p{N} digits); used by the publish gate
TITLE_KEY_SQL = "trim(regexp_replace(lower({col}), '[^\\\\p{{L}}\\\\p{{N}}]+', ' '))"


def title_key(title: Any) -> str:
    """The normalised title: lower case, non-alphanumeric runs -> one space, trimmed ('' for none)."""
    if title is None or (isinstance(title, float) and np.isnan(title)):
        return ""
    return _NON_WORD.sub(" ", str(title).lower()).strip()


def title_key_sql(col: str) -> str:
    return TITLE_KEY_SQL.format(col=col)


def duplicate_groups(products: pd.DataFrame, key: str = "title_image") -> pd.DataFrame:
    """Products that share a key with at least one other product: ``product_id, group_id, group_size``.

    ``key``: ``title_image`` (normalised title plus the image hash where the product has one) or
    ``title`` (normalised title only). Products with an empty title are never grouped. The group id
    is a stable hash of the key, so the same catalog gives the same ids on every run."""
    if key not in ("title_image", "title"):
        raise ValueError(f"score.collapse_key must be 'title_image' or 'title', not {key!r}")
    cols = ["product_id", "group_id", "group_size"]
    if products is None or not len(products) or "title" not in products.columns:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "group_size" else object) for c in cols})
    p = products.drop_duplicates("product_id")
    tk = p["title"].map(title_key)
    if key == "title_image" and "image_hash" in p.columns:
        ih = p["image_hash"].where(p["image_hash"].notna(), "").astype(str)
        full = tk + "\x1f" + ih
    else:
        full = tk + "\x1f"
    df = pd.DataFrame({"product_id": p["product_id"].to_numpy(object), "_key": full.to_numpy(object),
                       "_tk": tk.to_numpy(object)})
    df = df[df["_tk"] != ""]
    size = df.groupby("_key")["product_id"].transform("size")
    df = df.assign(group_size=size.astype("int64"))
    df = df[df["group_size"] > 1]
    df["group_id"] = df["_key"].map(lambda k: "g" + hashlib.sha1(k.encode("utf-8")).hexdigest()[:16])
    return df[cols].sort_values(["group_id", "product_id"], kind="stable").reset_index(drop=True)


def collapse(scored: pd.DataFrame, groups: pd.DataFrame, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the best-scored product of each duplicate group per query; rank 1..n; top ``k``.

    ``scored``: one row per (query_id, product_id) with ``score`` (any further columns are kept; a
    ``rank`` column is replaced). Non-finite scores rank last; ties by product id (as
    :func:`mmpipeline.score.scoring.rank_top`). Returns ``(ranking, duplicates)``: the collapsed
    ranking, and one row per hidden product whose group's shown product is in the top ``k``
    (:data:`DUPLICATE_COLUMNS`)."""
    base = scored.drop(columns=[c for c in ("rank",) if c in scored.columns])
    if not len(base):
        return base.assign(rank=pd.Series(dtype="int32")), pd.DataFrame(columns=DUPLICATE_COLUMNS)
    gid = base["product_id"].map(dict(zip(groups["product_id"], groups["group_id"]))) if len(groups) else None
    s = base.assign(_bad=~np.isfinite(base["score"].to_numpy(np.float64)),
                    _group=gid if gid is not None else np.nan)
    # a product outside every group is its own group
    s["_group"] = s["_group"].where(s["_group"].notna(), "p:" + s["product_id"].astype(str))
    s = s.sort_values(["query_id", "_bad", "score", "product_id"], ascending=[True, True, False, True],
                      kind="stable")
    first = ~s.duplicated(["query_id", "_group"], keep="first")
    kept = s[first].copy()
    kept["rank"] = kept.groupby("query_id", sort=False).cumcount().astype("int32") + 1
    kept = kept[kept["rank"] <= k]
    hidden = s[~first]
    shown = kept[kept["_group"].str.startswith("g")][["query_id", "_group", "product_id", "rank"]] \
        .rename(columns={"product_id": "shown_product_id", "rank": "shown_rank"})
    dups = hidden.merge(shown, on=["query_id", "_group"], how="inner").rename(columns={"_group": "group_id"})
    dups = dups[DUPLICATE_COLUMNS].sort_values(["query_id", "shown_rank", "score", "product_id"],
                                               ascending=[True, True, False, True], kind="stable")
    ranking = kept.drop(columns=["_bad", "_group"]).reset_index(drop=True)
    return ranking, dups.reset_index(drop=True)


def collapse_spark(spark, ranked, groups: pd.DataFrame, k: int):
    """:func:`collapse` on a Spark DataFrame of scored rows (query_id, product_id, score, ...; a
    ``rank`` column is replaced). Returns ``(ranking, duplicates)`` as Spark DataFrames."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    g = spark.createDataFrame(groups[["product_id", "group_id"]] if len(groups) else
                              pd.DataFrame({"product_id": pd.Series([], dtype=str),
                                            "group_id": pd.Series([], dtype=str)}),
                              schema="product_id string, group_id string")
    s = ranked.drop("rank").join(F.broadcast(g), "product_id", "left")
    s = s.withColumn("_group", F.coalesce(F.col("group_id"), F.concat(F.lit("p:"), F.col("product_id"))))
    bad = F.isnan(F.col("score")) | F.col("score").isNull() | (F.abs(F.col("score")) == float("inf"))
    order = [bad.asc(), F.col("score").desc(), F.col("product_id").asc()]
    s = s.withColumn("_n", F.row_number().over(Window.partitionBy("query_id", "_group").orderBy(*order)))
    kept = s.where(F.col("_n") == 1)
    kept = kept.withColumn("rank", F.row_number().over(Window.partitionBy("query_id").orderBy(*order)).cast("int")) \
        .where(F.col("rank") <= k)
    shown = kept.where(F.col("group_id").isNotNull()).select(
        "query_id", "_group", F.col("product_id").alias("shown_product_id"), F.col("rank").alias("shown_rank"))
    dups = s.where(F.col("_n") > 1).join(shown, ["query_id", "_group"], "inner") \
        .select("query_id", "product_id", F.col("_group").alias("group_id"), "shown_product_id", "shown_rank", "score")
    return kept.drop("_group", "_n", "group_id"), dups
