"""Attribute queries with graded judgments, generated from catalog attributes.

For catalogs that ship no queries (Fashion Product Images): the catalog team's attribute labels are
human-curated, so a query built from them ("men navy blue shirts" = gender + colour + article type)
with relevance graded by how many of the query's attributes a product matches is a fair benchmark.

``params``:

* ``fields`` (required): attribute names, in query word order, e.g. ``[gender, colour, article_type]``.
* ``subsets``: lists of fields to build queries from (default: just ``fields``).
* ``required``: fields a product must match to be relevant at all (default: none). With
  ``required: [article_type]`` a navy blue men's *watch* is not relevant to "men navy blue shirts".
* ``min_products``: a query needs at least this many full matches (default 3).
* ``max_partial``: judged partial matches kept per (query, grade), chosen by hash (default 20).
* ``negatives``: grade-0 products judged per query (default 5).
* ``max_queries``: demo knob, keep this many queries (by hash).

Grades (0-3): with ``required`` fields, 0 when one of them does not match, otherwise
``1 + round(2 * matched_other / n_other)``; without, ``floor(3 * matched / n)`` over the products
that match the query's first field. Every full match (grade 3) is judged, so retrieval over the
whole catalog is scored fairly; partial matches and negatives are capped (chosen by hash, so the
set is deterministic and re-runs give identical judgments).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mmpipeline.sources import CORRUPT_COL

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from mmpipeline.config import SourceConfig

log = logging.getLogger(__name__)


def generate(products: "DataFrame", fields: list[str], subsets: list[list[str]] | None = None,
             required: list[str] | None = None, min_products: int = 3, max_partial: int = 20,
             negatives: int = 5, max_queries: int | None = None) -> "DataFrame":
    """Pure transform: canonical products (``product_id``, ``attributes`` map) -> judgments
    (``query``, ``product_id``, ``grade`` as strings, plus ``n_fields`` and ``matched``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    subsets = subsets or [list(fields)]
    required = list(required or [])
    w_last = Window.partitionBy("product_id").orderBy(F.col("_row_id").desc())
    base = products
    if CORRUPT_COL in base.columns:
        base = base.where(F.col(CORRUPT_COL).isNull())
    if "_row_id" not in base.columns:
        base = base.withColumn("_row_id", F.monotonically_increasing_id())
    all_fields = sorted({f for s in subsets for f in s})
    p = (base.where(F.col("product_id").isNotNull() & (F.trim("product_id") != ""))
         .withColumn("_rn", F.row_number().over(w_last)).where("_rn = 1")
         .select(F.trim("product_id").alias("product_id"),
                 *[F.lower(F.trim(F.col("attributes")[f])).alias(f) for f in all_fields])).cache()
    out = None
    for subset in subsets:
        order = [f for f in fields if f in subset] + [f for f in subset if f not in fields]
        req = [f for f in order if f in required]
        other = [f for f in order if f not in req]
        full = p.where(F.expr(" AND ".join(f"{f} IS NOT NULL" for f in order)))
        q = (full.groupBy(*order).agg(F.count("*").alias("_n")).where(F.col("_n") >= min_products)
             .withColumn("query", F.concat_ws(" ", *order)).drop("_n"))
        if max_queries:
            q = q.withColumn("_h", F.xxhash64("query")).orderBy("_h").limit(int(max_queries)).drop("_h")
        qa = q.select("query", *[F.col(f).alias(f"q_{f}") for f in order])
        join_on = req or order[:1]
        cand = qa.join(p, on=[qa[f"q_{f}"] == p[f] for f in join_on])
        matched = sum((F.coalesce(F.col(f"q_{f}") == F.col(f), F.lit(False))).cast("int") for f in order)
        cand = cand.withColumn("matched", matched)
        if req:
            m_other = sum((F.coalesce(F.col(f"q_{f}") == F.col(f), F.lit(False))).cast("int") for f in other) if other else F.lit(0)
            grade = (F.lit(1) + F.round(F.lit(2.0) * m_other / F.lit(max(len(other), 1)))).cast("int") if other else F.lit(3)
        else:
            grade = F.floor(F.lit(3.0) * F.col("matched") / F.lit(len(order))).cast("int")
        cand = cand.withColumn("grade", grade).where("grade > 0")
        # all full matches; partial matches capped per (query, grade) by hash
        rank = Window.partitionBy("query", "grade").orderBy(F.xxhash64("query", "product_id"), "product_id")
        cand = (cand.withColumn("_r", F.row_number().over(rank))
                .where((F.col("grade") == 3) | (F.col("_r") <= max_partial))
                .select("query", "product_id", "grade", "matched"))
        parts = [cand]
        if negatives:
            pool = p.withColumn("_h", F.xxhash64("product_id")).orderBy("_h").limit(max(50, negatives * 20))
            neg = qa.crossJoin(pool)
            is_rel = F.lit(True)
            for f in join_on:
                is_rel = is_rel & F.coalesce(F.col(f"q_{f}") == F.col(f), F.lit(False))
            nrank = Window.partitionBy("query").orderBy(F.xxhash64("query", "product_id"), "product_id")
            neg = (neg.where(~is_rel).withColumn("_r", F.row_number().over(nrank)).where(F.col("_r") <= negatives)
                   .select("query", "product_id", F.lit(0).alias("grade"), F.lit(0).alias("matched")))
            parts.append(neg)
        for part in parts:
            part = part.withColumn("n_fields", F.lit(len(order)))
            out = part if out is None else out.unionByName(part)
    return out.dropDuplicates(["query", "product_id"])


def read(spark: "SparkSession", entity: str, src: "SourceConfig", upstream: dict[str, Any] | None = None) -> "DataFrame":
    """Judgments generated from this run's bronze products (``upstream['products']``)."""
    from pyspark.sql import functions as F

    from mmpipeline.context import StageError

    if entity != "judgments":
        raise StageError(f"sources.{entity}: the attribute_queries adapter produces judgments only")
    products = (upstream or {}).get("products")
    if products is None:
        raise StageError("sources.judgments (attribute_queries) needs a products source in the same config")
    p = src.params
    fields = p.get("fields")
    if not fields:
        raise StageError("sources.judgments.params.fields is required for attribute_queries, e.g. [gender, colour, article_type]")
    j = generate(products, list(fields), p.get("subsets"), p.get("required"), int(p.get("min_products", 3)),
                 int(p.get("max_partial", 20)), int(p.get("negatives", 5)), p.get("max_queries"))
    raw = F.to_json(F.struct("query", "product_id", "grade", "matched", "n_fields"))
    return j.select(
        F.col("query"), F.col("product_id"), F.col("grade").cast("string").alias("grade"),
        F.lit("attribute_queries:bronze.products").alias("_source_file"),
        F.monotonically_increasing_id().alias("_row_id"), raw.alias("_raw"),
        F.lit(None).cast("string").alias(CORRUPT_COL))


class AttributeGrader:
    """The grade :func:`generate` gives *every* product for one of its queries (numpy, one query at
    a time), not only the judged ones.

    :func:`generate` judges every full match but caps partial matches at ``max_partial`` per (query,
    grade) and grade-0 products at ``negatives``, so a ranking metric over those judgments counts an
    unjudged partial match as irrelevant: for a query with fewer full matches than the metric's depth,
    which partial matches happen to be judged decides part of the score, and no ranker can know it.
    ``bench quality`` uses this grader to score the rankings against complete grades as well, and to
    rank each query's candidates perfectly (the ceiling a reranker of those candidates can reach under
    the sampled judgments).

    ``attributes``: one attribute map (or None) per catalog row, in catalog order; the other
    arguments as for :func:`generate`. Grades follow the same rules (values lower-cased and trimmed;
    Spark's half-up rounding).
    """

    def __init__(self, attributes: Any, fields: list[str], subsets: list[list[str]] | None = None,
                 required: list[str] | None = None, min_products: int = 3):
        import numpy as np
        import pandas as pd

        from mmpipeline.retrieval.keys import normalize_query

        subsets = subsets or [list(fields)]
        self.required = list(required or [])
        all_fields = sorted({f for s in subsets for f in s})

        def norm(a: Any, f: str) -> Any:
            v = dict(a).get(f) if a is not None and not (isinstance(a, float) and np.isnan(a)) else None
            return None if v is None else str(v).strip().lower()

        attrs = list(attributes)
        frame = pd.DataFrame({f: [norm(a, f) for a in attrs] for f in all_fields})
        cats = {f: pd.Categorical(frame[f]) for f in all_fields}  # null -> code -1, matching no value
        self.codes = {f: np.asarray(c.codes, np.int64) for f, c in cats.items()}
        self.code_of = {f: {v: i for i, v in enumerate(c.categories)} for f, c in cats.items()}
        self.queries: dict[str, list[tuple[str, str]]] = {}  # normalised query text -> [(field, value)] in query order
        for subset in subsets:
            order = [f for f in fields if f in subset] + [f for f in subset if f not in fields]
            counts = frame.dropna(subset=order).groupby(order).size()
            for key, n in counts.items():
                key = key if isinstance(key, tuple) else (key,)
                if n >= min_products:
                    self.queries.setdefault(normalize_query(" ".join(key)), list(zip(order, key)))

    def grades(self, query_norm: str) -> "Any":
        """Per catalog row, the grade (0-3) of ``query_norm``; None for a query :func:`generate` would not make."""
        import numpy as np

        spec = self.queries.get(query_norm)
        if spec is None:
            return None
        match = {f: self.codes[f] == self.code_of[f].get(v, -2) for f, v in spec}
        order = [f for f, _ in spec]
        req = [f for f in order if f in self.required]
        other = [f for f in order if f not in req]
        if req:
            ok = np.logical_and.reduce([match[f] for f in req])
            if not other:
                return np.where(ok, 3, 0).astype(np.int64)
            m = np.sum([match[f] for f in other], axis=0)
            return np.where(ok, 1 + np.floor(2.0 * m / len(other) + 0.5), 0).astype(np.int64)
        matched = np.sum([match[f] for f in order], axis=0)
        return np.where(match[order[0]], np.floor(3.0 * matched / len(order)), 0).astype(np.int64)

    @classmethod
    def from_config(cls, src: "SourceConfig", attributes: Any) -> "AttributeGrader | None":
        """The grader of a judgments source using this adapter; None for any other adapter."""
        if src.adapter != "attribute_queries" or not src.params.get("fields"):
            return None
        p = src.params
        return cls(attributes, list(p["fields"]), p.get("subsets"), p.get("required"), int(p.get("min_products", 3)))
