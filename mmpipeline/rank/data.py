"""Training-data builder (``mmpipeline run build-training-data``).

From graded judgments and, when present, search interactions (graded by event type: purchase >
add-to-cart > click > impression), build one row per (query, product) with a label in [0, 1], a
split and the scalar features, plus sampled negatives from the whole catalog:

* random negatives: uniformly from the catalog, excluding the query's judged products;
* hard negatives: from the query's nearest products by embedding (text and image vectors) and,
  with ``rank.lexical_hard_negatives``, by BM25, excluding judged products.

Splits are by query (deterministic hash of the query id, stable across runs and seeds), so no query
is in two splits. Only data known at the run date is used: silver rows and vectors with
``run_date <= run date`` and interactions before the end of the run date.

``build`` is the pure transform (pandas in, pandas out); ``run`` is the stage around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpipeline.retrieval.features import SCALAR_FEATURES, PairFeaturizer

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import RankConfig
    from mmpipeline.context import RunContext

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SALT = "mmpipeline.rank.split"


def unit_hash(key: str, salt: str = _SALT) -> float:
    """A deterministic number in [0, 1) for ``key`` (independent of Python's hash seed)."""
    h = hashlib.blake2b(f"{salt}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def assign_split(query_ids: pd.Series, fractions: dict[str, float]) -> pd.Series:
    """train / valid / test per query id by hash; fractions are normalised to sum to 1."""
    names = [s for s in SPLITS if fractions.get(s, 0) > 0] + [s for s in fractions if s not in SPLITS]
    total = sum(fractions[s] for s in names)
    if total <= 0:
        raise ValueError(f"rank.split needs positive fractions, got {fractions}")
    edges = np.cumsum([fractions[s] / total for s in names])
    u = query_ids.astype(str).map(unit_hash).to_numpy()
    idx = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    return pd.Series(np.asarray(names, dtype=object)[idx], index=query_ids.index)


def grade_interactions(interactions: pd.DataFrame, grades: dict[str, float]) -> pd.DataFrame:
    """Interaction events -> one graded pair per (query, product): the best event's grade.
    Unknown event types are ignored (and counted in the log)."""
    if interactions is None or interactions.empty:
        return pd.DataFrame(columns=["query_id", "query_norm", "product_id", "grade"])
    ev = interactions.assign(event_type=interactions["event_type"].astype(str).str.lower().str.strip())
    g = ev["event_type"].map(grades)
    if g.isna().any():
        log.warning("interactions: %d events of unknown types %s ignored", int(g.isna().sum()),
                    sorted(ev.loc[g.isna(), "event_type"].unique())[:10])
    ev = ev.assign(grade=g).dropna(subset=["grade"])
    return (ev.groupby(["query_id", "product_id"], as_index=False)
            .agg(query_norm=("query_norm", "first"), grade=("grade", "max")))


def graded_pairs(judgments: pd.DataFrame, interactions: pd.DataFrame | None, rc: "RankConfig") -> pd.DataFrame:
    """Judged pairs (label = grade normalised to [0, 1] over the judgment scale) united with
    interaction-graded pairs (label = grade / best event grade); a judgment wins over interactions."""
    parts = []
    if judgments is not None and not judgments.empty:
        j = judgments.dropna(subset=["query_id", "product_id", "grade"]).copy()
        j["grade"] = j["grade"].astype(float)
        lo, hi = float(j["grade"].min()), float(j["grade"].max())
        j["label"] = (j["grade"] - lo) / (hi - lo) if hi > lo else 1.0
        j["source"] = "judgment"
        parts.append(j[["query_id", "query_norm", "product_id", "grade", "label", "source"]])
    ig = grade_interactions(interactions, rc.interaction_grades)
    if not ig.empty:
        top = max(rc.interaction_grades.values()) or 1.0
        ig = ig.assign(label=ig["grade"] / top, source="interaction")
        parts.append(ig[["query_id", "query_norm", "product_id", "grade", "label", "source"]])
    if not parts:
        return pd.DataFrame(columns=["query_id", "query_norm", "product_id", "grade", "label", "source"])
    out = pd.concat(parts, ignore_index=True)
    out["query_id"] = out["query_id"].astype(str)
    out["product_id"] = out["product_id"].astype(str)
    return out.drop_duplicates(["query_id", "product_id"], keep="first").reset_index(drop=True)


def hard_indexes(featurizer: PairFeaturizer, rc: "RankConfig | None" = None) -> list[Any]:
    """FAISS indexes over the products with a text / an image vector: the hard-negative neighbour
    pools. Exact (``IndexFlatIP``) on small catalogs; above ``rank.hard_index_exact_below`` products
    (``rank.hard_index: auto``) an IVF index with about sqrt(n) lists, 16 probed, trained on a
    seeded sample -- a flat scan of 1M products per query was half of the stage at that size. Built
    once per featuriser (a Spark worker keeps them across partitions)."""
    from mmpipeline.config import AnnConfig, RankConfig
    from mmpipeline.retrieval.ann import AnnIndex

    rc = rc or RankConfig()
    out = []
    for mat, hv in ((featurizer.p_text, featurizer.has_text), (featurizer.p_image, featurizer.has_image)):
        if hv.sum() == 0:
            continue
        sel = np.flatnonzero(hv > 0)
        kind = rc.hard_index if rc.hard_index != "auto" else ("exact" if len(sel) < rc.hard_index_exact_below else "ivf")
        if kind == "ivf":
            nlist = max(16, int(round(np.sqrt(len(sel)))))
            cfg = AnnConfig(kind="ivf", ivf_nlist=nlist, ivf_nprobe=16, ivf_train_size=50 * nlist, tune_queries=0,
                            seed=rc.seed)
        else:
            cfg = AnnConfig(kind="exact")
        out.append(AnnIndex.build(featurizer.ids[sel], mat[sel], cfg))
    return out


def sample_negatives(pairs: pd.DataFrame, featurizer: PairFeaturizer, rc: "RankConfig",
                     indexes: list[Any] | None = None) -> pd.DataFrame:
    """Random and hard negatives per query from the whole catalog (never a judged product).

    The nearest products come from FAISS exact search (:class:`~mmpipeline.retrieval.ann.AnnIndex`,
    ``IndexFlatIP``, :func:`hard_indexes`; pass ``indexes`` to reuse them), which scans the catalog in
    blocks with a top-k heap per query: memory holds the catalog vectors and k results per query,
    never a (queries x catalog) score matrix. Every query's negatives depend on that query alone
    (its own seeded generator), so any partition of the queries gives the same rows."""
    n_cat = len(featurizer.ids)
    queries = pairs[["query_id", "query_norm"]].drop_duplicates("query_id").reset_index(drop=True)
    judged = pairs.groupby("query_id")["product_id"].agg(set).to_dict()
    out_q, out_p, out_src = [], [], []
    hard_ids: dict[str, list[str]] = {}
    if rc.negatives_hard > 0 and len(queries):
        qv, has = featurizer.query_matrix(queries["query_norm"].tolist(), queries["query_id"].tolist())
        pools = []
        for idx in (hard_indexes(featurizer, rc) if indexes is None else indexes):
            ids, _ = idx.search(qv, min(rc.hard_pool_k, len(idx.ids)))
            pools.append(list(ids))
        if rc.lexical_hard_negatives:  # BM25 neighbours too: the candidates a reranker meets at serving time
            pools.append([featurizer.bm25_top(q, rc.hard_pool_k) for q in queries["query_norm"].fillna("")])
        for i, qid in enumerate(queries["query_id"]):
            if not has[i]:
                continue
            seen: list[str] = []
            for depth in range(rc.hard_pool_k):  # interleave text and image neighbours, nearest first
                for pool in pools:
                    if depth < len(pool[i]):
                        pid = pool[i][depth]  # None: an approximate index found fewer than k
                        if pid is not None and pid not in judged.get(qid, ()) and pid not in seen:
                            seen.append(pid)
            hard_ids[qid] = seen
    for qid in queries["query_id"]:
        rng = np.random.default_rng(int(unit_hash(f"{qid}|{rc.seed}", "neg") * 2 ** 32))
        taken = set(judged.get(qid, ()))
        hard = hard_ids.get(qid, [])
        if hard:
            pick = rng.permutation(len(hard))[:rc.negatives_hard]
            for j in sorted(pick):
                out_q.append(qid), out_p.append(hard[j]), out_src.append("hard_negative")
                taken.add(hard[j])
        need, tries = rc.negatives_random, 0
        while need > 0 and tries < 5 and len(taken) < n_cat:
            cand = featurizer.ids[rng.integers(0, n_cat, size=need * 2)]
            for pid in dict.fromkeys(cand):
                if need and pid not in taken:
                    out_q.append(qid), out_p.append(pid), out_src.append("random_negative")
                    taken.add(pid)
                    need -= 1
            tries += 1
    neg = pd.DataFrame({"query_id": out_q, "product_id": out_p, "source": out_src})
    neg = neg.merge(queries, on="query_id", how="left")
    return neg.assign(grade=np.nan, label=0.0)


def scalar_features_by_query_block(featurizer: PairFeaturizer, df: pd.DataFrame, block: int = 128) -> pd.DataFrame:
    """``featurizer.scalar_features`` for every row of ``df`` (query_norm, query_id, product_id), in
    row order, ``block`` queries at a time: the featuriser's whole-catalog BM25 score row per query
    (one float per product) is dropped after each block, so memory holds ``block`` of them at most."""
    df = df.reset_index(drop=True)
    codes, uniq = pd.factorize(df["query_id"], sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(0, len(uniq) + block, block))
    parts, rows = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if a >= b:
            continue
        r = order[a:b]
        sub = df.iloc[r]
        parts.append(featurizer.scalar_features(sub["query_norm"].fillna("").tolist(), sub["query_id"].tolist(),
                                                sub["product_id"].tolist()))
        rows.append(r)
        cache = getattr(featurizer, "_bm25_cache", None)
        if cache is not None:
            cache.clear()
    if not parts:
        return featurizer.scalar_features([], [], [])
    out = pd.concat(parts, ignore_index=True)
    out.index = np.concatenate(rows)
    return out.sort_index()


def judged_pairs(judgments: pd.DataFrame, interactions: pd.DataFrame | None, known: Any,
                 rc: "RankConfig") -> tuple[pd.DataFrame, dict[str, int]]:
    """Graded pairs whose product is in the catalog (``known``: a container of product ids, or a
    function ``product ids -> bool mask``), subsampled by query hash when ``rc.max_train_queries``."""
    pairs = graded_pairs(judgments, interactions, rc)
    counts = {"graded_pairs": len(pairs)}
    ok = (np.asarray(known(pairs["product_id"]), bool) if callable(known)
          else pairs["product_id"].isin(known).to_numpy())
    counts["dropped_unknown_product"] = int((~ok).sum())
    pairs = pairs[ok].reset_index(drop=True)
    if rc.max_train_queries:
        qs = pd.Series(pairs["query_id"].unique())
        keep = set(qs.iloc[np.argsort(qs.map(lambda q: unit_hash(q, "subsample")).to_numpy())[:rc.max_train_queries]])
        pairs = pairs[pairs["query_id"].isin(keep)].reset_index(drop=True)
        counts["pairs_after_query_subsample"] = len(pairs)
    return pairs, counts


ROW_ORDER = ["split", "query_id", "source", "product_id"]


def training_rows(pairs: pd.DataFrame, featurizer: PairFeaturizer, rc: "RankConfig", run_date: Any,
                  indexes: list[Any] | None = None) -> pd.DataFrame:
    """The training rows of the queries in ``pairs`` (judged pairs of known products): the pairs,
    their sampled negatives, split and scalar features, in ``ROW_ORDER``. Rows depend only on each
    query's own pairs, so the rows of a partition of the queries are that partition's rows of the
    whole (the Spark engine relies on it)."""
    neg = sample_negatives(pairs, featurizer, rc, indexes)
    df = pd.concat([pairs, neg[pairs.columns]], ignore_index=True)
    df["split"] = assign_split(df["query_id"], rc.split)
    feats = scalar_features_by_query_block(featurizer, df)
    df = pd.concat([df.reset_index(drop=True), feats], axis=1)
    df["run_date"] = pd.Timestamp(run_date).date()
    df["text_model"] = featurizer.meta.get("text_model")
    df["image_model"] = featurizer.meta.get("image_model")
    return df.sort_values(ROW_ORDER, kind="stable").reset_index(drop=True)


def build(judgments: pd.DataFrame, interactions: pd.DataFrame | None, featurizer: PairFeaturizer,
          rc: "RankConfig", run_date: Any) -> tuple[pd.DataFrame, dict[str, int]]:
    """The training table for ``run_date`` and row counts per step. Judged pairs whose product is
    not in the catalog are dropped (counted as ``dropped_unknown_product``)."""
    pairs, counts = judged_pairs(judgments, interactions, featurizer.pos, rc)
    df = training_rows(pairs, featurizer, rc, run_date)
    counts["hard_negatives"] = int((df["source"] == "hard_negative").sum())
    counts["random_negatives"] = int((df["source"] == "random_negative").sum())
    counts["rows"] = len(df)
    counts["queries"] = int(df["query_id"].nunique())
    for s in SPLITS:
        counts[f"{s}_queries"] = int(df.loc[df["split"] == s, "query_id"].nunique())
    return df, counts


# ------------------------------------------------------------------------------------ spark

QUERY_BLOCK = 256  # queries per training_rows call in a Spark partition


def worker_featurizer(cfg_json: str, run_date: str,
                      versions: dict[str, int | None]) -> tuple[PairFeaturizer, list[Any], str]:
    """The featuriser of the catalog known at ``run_date`` (tables at the driver's ``versions``) and
    its hard-negative indexes, cached in this process (:mod:`mmpipeline.retrieval.worker_state`: one
    stage's state per worker): a worker running many partitions of a night loads them once.
    Returns (featuriser, indexes, load id)."""
    from mmpipeline.retrieval.worker_state import get_or_load

    key = "training-data:" + hashlib.sha256(json.dumps([cfg_json, run_date, versions], sort_keys=True,
                                                       default=str).encode()).hexdigest()

    def load() -> tuple[PairFeaturizer, list[Any], str]:
        import os
        import uuid

        from mmpipeline.config import Config
        from mmpipeline.lake import Lake

        cfg = Config.model_validate_json(cfg_json)
        lake = Lake(cfg.lake.root, engine="delta-rs")  # reads only, pinned versions
        fz = PairFeaturizer.from_lake(lake, cfg, as_of=pd.Timestamp(run_date).date(), versions=versions)
        idx = hard_indexes(fz, cfg.rank) if cfg.rank.negatives_hard > 0 else []
        log.info("training-data worker %d: featuriser of %d products loaded", os.getpid(), len(fz.ids))
        return fz, idx, f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    return get_or_load(key, load)


def known_products(lake, run_date: Any, version: int | None) -> Any:
    """``product ids -> bool mask``: in ``silver.products`` (at ``version``, rows with ``run_date <=
    run_date``), the catalog the featuriser holds. Arrow only: one id column, no per-product objects."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = lake.read_arrow("silver.products", version=version, columns=["product_id", "run_date"])
    d = pa.scalar(pd.Timestamp(run_date).date(), pa.date32())
    ids = pc.unique(t.filter(pc.less_equal(t["run_date"].cast(pa.date32()), d))["product_id"].cast(pa.string()))

    def known(product_ids: pd.Series) -> np.ndarray:
        arr = pa.array(product_ids.astype(str).tolist(), pa.string())
        return pc.is_in(arr, value_set=ids).to_numpy(zero_copy_only=False)

    return known


def build_spark(spark, cfg: Any, pairs: pd.DataFrame, run_date: Any, versions: dict[str, int | None],
                partitions: int | None = None):
    """:func:`training_rows` on Spark, partitioned by query: the judged pairs go to the executors
    split by ``query_id``; each partition samples its queries' negatives and computes their features
    with the worker's featuriser (:func:`worker_featurizer`: loaded once per Python worker), a block
    of queries at a time. Returns the Spark DataFrame of ``gold.training_data`` rows (the driver
    never holds the catalog or the rows)."""
    from pyspark.sql import types as T

    from mmpipeline.schemas import spark_schema, table

    out_schema = spark_schema(table("gold.training_data"))
    out_cols = [f.name for f in out_schema.fields]
    cols = ["query_id", "query_norm", "product_id", "grade", "label", "source"]
    in_schema = T.StructType([T.StructField(c, T.DoubleType() if c in ("grade", "label") else T.StringType())
                              for c in cols])
    cfg_json = cfg.model_dump_json()
    rc = cfg.rank
    day = str(pd.Timestamp(run_date).date())
    vers = {k: v for k, v in versions.items() if v is not None}
    pdf = pairs[cols].astype({"grade": "float64", "label": "float64"})
    n_parts = max(1, int(partitions or spark.sparkContext.defaultParallelism))
    sdf = spark.createDataFrame(pdf, schema=in_schema).repartition(n_parts, "query_id")

    def _rows(batches):
        from mmpipeline.rank import data as _data  # the worker's module: its cache survives tasks

        got = [b for b in batches if len(b)]
        if not got:
            return
        part = pd.concat(got, ignore_index=True)  # this partition's judged pairs (a query never spans two)
        fz, idx, _ = _data.worker_featurizer(cfg_json, day, vers)
        qids = part["query_id"].unique()
        for s in range(0, len(qids), _data.QUERY_BLOCK):
            sub = part[part["query_id"].isin(set(qids[s:s + _data.QUERY_BLOCK]))].reset_index(drop=True)
            yield _data.training_rows(sub, fz, rc, day, idx)[out_cols]

    return sdf.mapInPandas(_rows, schema=out_schema)


def _spark_counts(rows) -> tuple[dict[str, Any], list[list[Any]], float]:
    """Counts of the Spark rows (as :func:`build` reports them), the split x source table and the
    label mean, in one aggregation (a rollup: per split and source, per split, in all)."""
    from pyspark.sql import functions as F

    agg = (rows.rollup("split", "source")
           .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("query_id").alias("queries"),
                F.avg("label").alias("label_mean"))
           .collect())
    total = next((r for r in agg if r["split"] is None), None)
    per_split = {r["split"]: int(r["queries"]) for r in agg if r["split"] is not None and r["source"] is None}
    by = sorted((r for r in agg if r["split"] is not None and r["source"] is not None),
                key=lambda r: (r["split"], r["source"]))
    src: dict[str, int] = {}
    for r in by:
        src[r["source"]] = src.get(r["source"], 0) + int(r["rows"])
    counts = {"hard_negatives": src.get("hard_negative", 0), "random_negatives": src.get("random_negative", 0),
              "rows": int(total["rows"]) if total else 0, "queries": int(total["queries"]) if total else 0}
    for s in SPLITS:
        counts[f"{s}_queries"] = per_split.get(s, 0)
    mean = float(total["label_mean"] or 0.0) if total else 0.0
    return counts, [[r["split"], r["source"], int(r["rows"]), int(r["queries"])] for r in by], mean


# ------------------------------------------------------------------------------------ stage


def _read_known(lake, name: str, columns: list[str], run_date) -> pd.DataFrame | None:
    if not lake.exists(name):
        return None
    df = lake.read_pandas(name, columns=columns)
    if "run_date" in df.columns:
        df = df[pd.to_datetime(df["run_date"]).dt.date <= run_date]
    return df


def load_inputs(lake, run_date) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Judgments and interactions known at ``run_date`` (silver rows of that date or earlier;
    interaction events before the end of the run date)."""
    judgments = _read_known(lake, "silver.judgments", ["query_id", "query_norm", "product_id", "grade", "run_date"], run_date)
    interactions = _read_known(lake, "silver.interactions",
                               ["query_id", "query_norm", "product_id", "event_type", "event_ts", "run_date"], run_date)
    if interactions is not None and len(interactions):
        end = pd.Timestamp(run_date, tz="UTC") + pd.Timedelta(days=1)
        ts = pd.to_datetime(interactions["event_ts"], utc=True)
        interactions = interactions[ts.isna() | (ts < end)]
    return judgments, interactions


def run(ctx: "RunContext") -> dict[str, Any]:
    from mmpipeline.context import StageError
    from mmpipeline.ops import print_table

    rc = ctx.cfg.rank
    lake = ctx.lake
    for need in ("silver.products", "gold.product_embeddings"):
        if not lake.exists(need):
            raise StageError(f"{need} does not exist: run the clean and embed stages first")
    judgments, interactions = load_inputs(lake, ctx.run_date)
    if (judgments is None or judgments.empty) and (interactions is None or interactions.empty):
        raise StageError("no judgments or interactions known at the run date: nothing to learn from")
    versions = {n: lake.version(n) for n in ("silver.products", "silver.judgments", "silver.interactions",
                                            "gold.product_embeddings", "gold.query_embeddings")}
    meta = {"mmp_run_date": str(ctx.run_date), "mmp_input_versions": json.dumps(versions),
            "mmp_stage": "build-training-data"}
    if rc.data_engine == "spark":
        lake = ctx.spark_lake()
        known = known_products(lake, ctx.run_date, versions["silver.products"])
        pairs, counts = judged_pairs(judgments, interactions, known, rc)
        rows = build_spark(ctx.spark, ctx.cfg, pairs, ctx.run_date, versions, rc.data_partitions or None).persist()
        try:
            more, table_rows, label_mean = _spark_counts(rows)
            counts.update(more)
            if not counts["rows"]:
                raise StageError("the training data is empty (judged products unknown to the catalog?)")
            version = lake.write("gold.training_data", rows, mode="overwrite", partition={"run_date": ctx.run_date},
                                 metadata=meta)
        finally:
            rows.unpersist()
    else:
        featurizer = PairFeaturizer.from_lake(lake, ctx.cfg, as_of=ctx.run_date, versions=versions)
        df, counts = build(judgments, interactions, featurizer, rc, ctx.run_date)
        if df.empty:
            raise StageError("the training data is empty (judged products unknown to the catalog?)")
        version = lake.write("gold.training_data", df, mode="overwrite", partition={"run_date": ctx.run_date},
                             metadata=meta)
        by = (df.groupby(["split", "source"]).agg(rows=("product_id", "size"), queries=("query_id", "nunique"))
              .reset_index())
        table_rows, label_mean = by.values.tolist(), float(df["label"].mean())
    print_table(f"build-training-data {ctx.run_date}: gold.training_data v{version}", ["split", "source", "rows", "queries"],
                table_rows)
    log.info("training data: %s", counts)
    return {"table": "gold.training_data", "version": version, **counts, "engine": rc.data_engine,
            "label_mean": round(label_mean, 4), "input_versions": versions,
            "features": SCALAR_FEATURES}
