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


def sample_negatives(pairs: pd.DataFrame, featurizer: PairFeaturizer, rc: "RankConfig") -> pd.DataFrame:
    """Random and hard negatives per query from the whole catalog (never a judged product).

    The nearest products come from FAISS exact search (:class:`~mmpipeline.retrieval.ann.AnnIndex`,
    ``IndexFlatIP``), which scans the catalog in blocks with a top-k heap per query: memory holds the
    catalog vectors and k results per query, never a (queries x catalog) score matrix."""
    from mmpipeline.config import AnnConfig
    from mmpipeline.retrieval.ann import AnnIndex

    n_cat = len(featurizer.ids)
    queries = pairs[["query_id", "query_norm"]].drop_duplicates("query_id").reset_index(drop=True)
    judged = pairs.groupby("query_id")["product_id"].agg(set).to_dict()
    out_q, out_p, out_src = [], [], []
    hard_ids: dict[str, list[str]] = {}
    if rc.negatives_hard > 0 and len(queries):
        qv, has = featurizer.query_matrix(queries["query_norm"].tolist(), queries["query_id"].tolist())
        pools = []
        for mat, hv in ((featurizer.p_text, featurizer.has_text), (featurizer.p_image, featurizer.has_image)):
            if hv.sum() == 0:
                continue
            sel = np.flatnonzero(hv > 0)
            idx = AnnIndex.build(featurizer.ids[sel], mat[sel], AnnConfig(kind="exact"))
            k = min(rc.hard_pool_k, len(sel))
            ids, _ = idx.search(qv, k)
            pools.append(ids)
        if rc.lexical_hard_negatives:  # BM25 neighbours too: the candidates a reranker meets at serving time
            ids, _ = featurizer.bm25.search(queries["query_norm"].fillna("").tolist(), min(rc.hard_pool_k, n_cat))
            pools.append(ids)
        for i, qid in enumerate(queries["query_id"]):
            if not has[i]:
                continue
            seen: list[str] = []
            for depth in range(rc.hard_pool_k):  # interleave text and image neighbours, nearest first
                for pool in pools:
                    if depth < pool.shape[1]:
                        pid = pool[i, depth]
                        if pid not in judged.get(qid, ()) and pid not in seen:
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


def build(judgments: pd.DataFrame, interactions: pd.DataFrame | None, featurizer: PairFeaturizer,
          rc: "RankConfig", run_date: Any) -> tuple[pd.DataFrame, dict[str, int]]:
    """The training table for ``run_date`` and row counts per step. Judged pairs whose product is
    not in the catalog are dropped (counted as ``dropped_unknown_product``)."""
    pairs = graded_pairs(judgments, interactions, rc)
    counts = {"graded_pairs": len(pairs)}
    known = pairs["product_id"].isin(featurizer.pos)
    counts["dropped_unknown_product"] = int((~known).sum())
    pairs = pairs[known].reset_index(drop=True)
    if rc.max_train_queries:
        qs = pd.Series(pairs["query_id"].unique())
        keep = set(qs.iloc[np.argsort(qs.map(lambda q: unit_hash(q, "subsample")).to_numpy())[:rc.max_train_queries]])
        pairs = pairs[pairs["query_id"].isin(keep)].reset_index(drop=True)
        counts["pairs_after_query_subsample"] = len(pairs)
    neg = sample_negatives(pairs, featurizer, rc)
    counts["hard_negatives"] = int((neg["source"] == "hard_negative").sum())
    counts["random_negatives"] = int((neg["source"] == "random_negative").sum())
    df = pd.concat([pairs, neg[pairs.columns]], ignore_index=True)
    df["split"] = assign_split(df["query_id"], rc.split)
    feats = scalar_features_by_query_block(featurizer, df)
    df = pd.concat([df.reset_index(drop=True), feats], axis=1)
    df["run_date"] = pd.Timestamp(run_date).date()
    df["text_model"] = featurizer.meta.get("text_model")
    df["image_model"] = featurizer.meta.get("image_model")
    df = df.sort_values(["split", "query_id", "source", "product_id"], kind="stable").reset_index(drop=True)
    counts["rows"] = len(df)
    counts["queries"] = int(df["query_id"].nunique())
    for s in SPLITS:
        counts[f"{s}_queries"] = int(df.loc[df["split"] == s, "query_id"].nunique())
    return df, counts


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
    featurizer = PairFeaturizer.from_lake(lake, ctx.cfg, as_of=ctx.run_date, versions=versions)
    df, counts = build(judgments, interactions, featurizer, rc, ctx.run_date)
    if df.empty:
        raise StageError("the training data is empty (judged products unknown to the catalog?)")
    version = lake.write("gold.training_data", df, mode="overwrite", partition={"run_date": ctx.run_date},
                         metadata={"mmp_run_date": str(ctx.run_date), "mmp_input_versions": json.dumps(versions),
                                   "mmp_stage": "build-training-data"})
    by = df.groupby(["split", "source"]).agg(rows=("product_id", "size"), queries=("query_id", "nunique")).reset_index()
    print_table(f"build-training-data {ctx.run_date}: gold.training_data v{version}", ["split", "source", "rows", "queries"],
                by.values.tolist())
    log.info("training data: %s", counts)
    return {"table": "gold.training_data", "version": version, **counts,
            "label_mean": round(float(df["label"].mean()), 4), "input_versions": versions,
            "features": SCALAR_FEATURES}
