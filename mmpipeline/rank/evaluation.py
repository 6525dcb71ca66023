"""Evaluation on held-out queries over the whole catalog: the computation, no I/O.

For every held-out (test-split) query, each system ranks the **whole catalog**:

* ``bm25``, ``text_cosine``, ``image_cosine``: exact scores against every product;
* model systems (``challenger``, ``champion``, bench variants): candidate retrieval (BM25 top-K
  union text top-K union image top-K) then rerank with the model; products outside the candidates
  rank below every candidate. The candidates come from the score stage's own
  :class:`~mmpipeline.retrieval.candidates.CandidateGenerator` with ``score.candidates_k``,
  ``score.candidate_sources`` and ``score.ann``, so the gate measures the candidate set that is published.

A baseline the catalog cannot have is not applicable: without any product image there is no
``image_cosine`` system at all (absent from the metrics, reported as n/a), never a row of zeros.

Metrics (definitions of torchmetrics' retrieval metrics, see mmpipeline.rank.metrics): NDCG@k with graded gains, MRR and Recall@K with binary relevance
(normalised grade >= ``rank.relevant_min_label``), overall and per slice: short / long queries and
products with / without images (relevance restricted to products that have / have no image).
:func:`versus` counts per-query wins, losses and ties of each model against every other system per
slice (``evaluate``'s ``versus``). RMSE of predicted
grades on every judged test pair (whether retrieved or not), with an isotonic score->grade calibration fitted on the
judged pairs of the validation split (never on test), next to the RMSE of predicting the mean training grade. The
score calibrated is the model's grade head where it has one (``grade_scorer_for``), else its ranking score.

:func:`evaluate` is the whole computation (featurizer + training frame + models in, metrics out);
:func:`compute_metrics` and :func:`calibrated_rmse` are its pure cores. The stage that reads the
lake, logs to MLflow and gates promotion is :mod:`mmpipeline.rank.evaluate`; the gate decision is
:mod:`mmpipeline.rank.gate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from mmpipeline.rank.metrics import FLOOR, retrieval_metrics
from mmpipeline.rank.gate import SLICES
from mmpipeline.retrieval.candidates import CandidateGenerator
from mmpipeline.retrieval.features import PairFeaturizer, arrays_to_frame
from mmpipeline.retrieval.text import tokenize

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import RankConfig

BASELINES = ("bm25", "text_cosine", "image_cosine")
Scorer = Callable[[dict[str, np.ndarray]], np.ndarray]


def scorer_for(model: Any, batch_size: int = 8192) -> Scorer:
    """A function arrays -> scores for a FusionRanker, a LoadedRanker or any ``predict(df)`` model."""
    from mmpipeline.rank.fusion import FusionRanker

    inner = model
    if hasattr(model, "pyfunc"):  # LoadedRanker
        try:
            inner = model.model
        except Exception:  # a foreign pyfunc model: go through the DataFrame interface
            inner = model
    if isinstance(inner, FusionRanker):
        return lambda a: inner.score_arrays(a, batch_size)
    if not hasattr(model, "pyfunc") and callable(getattr(model, "score_arrays", None)):  # e.g. the LambdaMART peer
        return lambda a: np.asarray(model.score_arrays(a, batch_size), dtype=np.float64)
    return lambda a: np.asarray(model.predict(arrays_to_frame(a)), dtype=np.float64).reshape(-1)


def grade_scorer_for(model: Any, batch_size: int = 8192) -> Scorer | None:
    """A function arrays -> predicted grades for a model with a grade head (a FusionRanker trained
    with ``rank.grade_weight > 0``, the LambdaMART peer with its regression booster); None otherwise."""
    inner = model
    if hasattr(model, "pyfunc"):  # LoadedRanker
        try:
            inner = model.model
        except Exception:
            return None
    if not callable(getattr(inner, "grade_arrays", None)) or not getattr(inner, "has_grade_head", False):
        return None
    return lambda a: np.asarray(inner.grade_arrays(a, batch_size), dtype=np.float64)


@dataclass
class Relevance:
    """Held-out judged pairs: per query, catalog rows and gains (normalised grades)."""

    query_ids: list[str]
    queries: list[str]
    rows: list[np.ndarray]
    gains: list[np.ndarray]

    @classmethod
    def from_training_data(cls, df: pd.DataFrame, featurizer: PairFeaturizer, split: str = "test",
                           max_queries: int | None = None) -> "Relevance":
        from mmpipeline.rank.data import unit_hash

        j = df[(df["split"] == split) & df["source"].isin(["judgment", "interaction"])]
        j = j.assign(row=featurizer.product_rows(j["product_id"].tolist()))
        j = j[j["row"] >= 0]
        qs = j[["query_id", "query_norm"]].drop_duplicates("query_id")
        if max_queries and len(qs) > max_queries:
            order = np.argsort(qs["query_id"].map(lambda q: unit_hash(q, "eval")).to_numpy())
            qs = qs.iloc[np.sort(order[:max_queries])]
        groups = dict(tuple(j.groupby("query_id")))
        rows, gains = [], []
        for qid in qs["query_id"]:
            g = groups[qid].drop_duplicates("row")
            rows.append(g["row"].to_numpy(np.int64))
            gains.append(g["label"].to_numpy(np.float64))
        return cls(qs["query_id"].astype(str).tolist(), qs["query_norm"].fillna("").tolist(), rows, gains)


@dataclass
class Rankings:
    """Per system: for each query, the catalog rows it scored (retrieved plus judged) and scores."""

    items: dict[str, list[np.ndarray]] = field(default_factory=dict)
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, system: str, rows: np.ndarray, scores: np.ndarray) -> None:
        self.items.setdefault(system, []).append(rows)
        self.scores.setdefault(system, []).append(scores)


def _topk(row: np.ndarray, k: int) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(row))
    if len(finite) <= k:
        return finite[np.argsort(-row[finite], kind="stable")]
    part = finite[np.argpartition(-row[finite], k - 1)[:k]]
    return part[np.argsort(-row[part], kind="stable")]


def dense_topk(qvec: np.ndarray, has_q: np.ndarray, mat: np.ndarray, has: np.ndarray, k: int,
               block: int = 65_536) -> list[np.ndarray]:
    """Per query, the catalog rows of the ``k`` best cosines ``qvec @ mat.T`` among products with a
    vector (``has``), best first, as ``_topk`` of the full score row would give (ties aside); empty
    for a query without a vector. The catalog is scanned ``block`` rows at a time with a running
    top-``k`` per query: memory holds (queries x block) scores, never (queries x catalog)."""
    nq = len(qvec)
    best_s = np.zeros((nq, 0), np.float32)
    best_i = np.zeros((nq, 0), np.int64)
    if k <= 0 or not nq:
        return [np.zeros(0, np.int64) for _ in range(nq)]
    for c0 in range(0, len(mat), block):
        sc = qvec @ mat[c0:c0 + block].T
        sc[:, has[c0:c0 + block] <= 0] = -np.inf
        cs = np.concatenate([best_s, sc], axis=1)
        ci = np.concatenate([best_i, np.broadcast_to(np.arange(c0, c0 + sc.shape[1], dtype=np.int64), sc.shape)], axis=1)
        if cs.shape[1] > k:
            part = np.argpartition(-cs, k - 1, axis=1)[:, :k]
            cs, ci = np.take_along_axis(cs, part, 1), np.take_along_axis(ci, part, 1)
        best_s, best_i = cs, ci
    out = []
    for b in range(nq):
        ok = np.isfinite(best_s[b]) & bool(has_q[b])
        i, v = best_i[b][ok], best_s[b][ok].astype(np.float64)
        out.append(i[np.argsort(-v, kind="stable")])
    return out


def forget_query_rows(featurizer: PairFeaturizer) -> None:
    """Drop the featuriser's cached whole-catalog BM25 score rows (one float per product per query)."""
    for name in ("_bm25_cache", "_field_cache"):
        cache = getattr(featurizer, name, None)
        if cache is not None:
            cache.clear()


def rank_catalog(featurizer: PairFeaturizer, rel: Relevance, models: dict[str, Scorer], rc: "RankConfig",
                 progress: bool = True, candidates: CandidateGenerator | None = None) -> tuple[Rankings, dict[str, float]]:
    """Rank the whole catalog for every held-out query with the baselines and each model (which
    rerank the ``candidates`` generator's union; default: the generator over the featurizer's
    catalog with ``rc.candidates_k``)."""
    from tqdm.auto import tqdm

    if candidates is None:
        candidates = CandidateGenerator.from_featurizer(featurizer, rc.candidates_k)

    out = Rankings()
    n_cand: list[int] = []
    depth = max(rc.recall_k, rc.eval_k)
    has_t, has_i = featurizer.has_text > 0, featurizer.has_image > 0
    baselines = applicable_baselines(featurizer)
    bar = tqdm(total=len(rel.query_ids), desc="evaluate", unit="query", disable=not progress, leave=False)
    dense = {"text_cosine": (featurizer.p_text, has_t), "image_cosine": (featurizer.p_image, has_i)}
    for s in range(0, len(rel.query_ids), rc.eval_batch_queries):
        qids = rel.query_ids[s:s + rc.eval_batch_queries]
        qtexts = rel.queries[s:s + rc.eval_batch_queries]
        qvec, has_q = featurizer.query_matrix(qtexts, qids)
        # the dense baselines' top ``depth`` per query, the catalog scanned in blocks: memory holds
        # (batch x block) scores and the running top lists, never (batch x catalog)
        tops = {name: dense_topk(qvec, has_q > 0, *dense[name], depth) for name in baselines if name in dense}
        cand_rows, cand_q = [], []
        cand_ids = candidates.candidate_lists(qids, qtexts, qvec, has_q)
        for b in range(len(qids)):
            judged = rel.rows[s + b]
            for name in baselines:
                if name == "bm25":  # one whole-catalog score row of this query at a time
                    row = featurizer.bm25_scores(qtexts[b]).astype(np.float64)
                    row[row <= 0] = -np.inf  # no query token in the title: not retrieved
                    items = np.unique(np.concatenate([_topk(row, depth), judged]))
                    sc = row[items]
                else:
                    mat, has = dense[name]
                    items = np.unique(np.concatenate([tops[name][b], judged])).astype(np.int64)
                    sc = (mat[items] @ qvec[b]).astype(np.float64)
                    sc[(has[items] <= 0) | (not has_q[b])] = -np.inf
                out.add(name, items, np.where(np.isfinite(sc), sc, FLOOR))
            cands = np.unique(featurizer.product_rows(cand_ids[b]))
            n_cand.append(len(cands))
            cand_rows.append(cands)
            cand_q.append(np.full(len(cands), b))
        if models:
            flat_rows = np.concatenate(cand_rows)
            flat_q = np.concatenate(cand_q)
            arrays = featurizer.arrays([qtexts[i] for i in flat_q], [qids[i] for i in flat_q],
                                       featurizer.ids[flat_rows].tolist())
            for name, scorer in models.items():
                sc = scorer(arrays)
                bounds = np.cumsum([len(c) for c in cand_rows])[:-1]
                for b, (cands, part) in enumerate(zip(cand_rows, np.split(sc, bounds))):
                    judged = rel.rows[s + b]
                    extra = np.setdiff1d(judged, cands)
                    items = np.concatenate([cands, extra])
                    scores = np.concatenate([part, np.full(len(extra), FLOOR)])
                    out.add(name, items, scores)
        forget_query_rows(featurizer)  # this batch's whole-catalog BM25 rows
        bar.update(len(qids))
    bar.close()
    return out, {"mean_candidates": float(np.mean(n_cand)) if n_cand else 0.0,
                 "candidate_recall": _candidate_recall(out, rel, rc, models)}


def applicable_baselines(featurizer: PairFeaturizer) -> tuple[str, ...]:
    """The baselines this catalog can have: no ``image_cosine`` without any product image."""
    return tuple(b for b in BASELINES if b != "image_cosine" or bool((featurizer.has_image > 0).any()))


def _candidate_recall(r: Rankings, rel: Relevance, rc: "RankConfig", models: dict) -> float:
    if not models:
        return float("nan")
    name = next(iter(models))
    hit = tot = 0
    for qi, (items, scores) in enumerate(zip(r.items[name], r.scores[name])):
        relevant = set(rel.rows[qi][rel.gains[qi] >= rc.relevant_min_label])
        retrieved = set(items[scores > FLOOR])
        hit += len(relevant & retrieved)
        tot += len(relevant)
    return hit / tot if tot else float("nan")


def slice_queries(rel: Relevance, rc: "RankConfig") -> dict[str, np.ndarray]:
    """Query slice name -> boolean mask over ``rel``'s queries (short / long by token count)."""
    ntok = np.array([len(tokenize(q)) for q in rel.queries])
    return {"all": np.ones(len(ntok), bool), "short_queries": ntok < rc.long_query_tokens,
            "long_queries": ntok >= rc.long_query_tokens}


def _slice_lists(r: Rankings, rel: Relevance, no_image: np.ndarray, rc: "RankConfig", system: str, slice_name: str,
                 sl: dict[str, np.ndarray]):
    """(query index, items, scores, gains) of ``system``'s queries in ``slice_name``. The product
    slices restrict relevance to products without / with an image and keep the queries that still
    have a relevant product."""
    for qi, (items, scores) in enumerate(zip(r.items[system], r.scores[system])):
        gmap = dict(zip(rel.rows[qi].tolist(), rel.gains[qi].tolist()))
        g = np.array([gmap.get(int(i), 0.0) for i in items])
        if slice_name in ("no_image_products", "image_products"):
            keep = no_image[items] if slice_name == "no_image_products" else ~no_image[items]
            g = np.where(keep, g, 0.0)
            if not (g >= rc.relevant_min_label).any():
                continue
        elif not sl[slice_name][qi]:
            continue
        yield qi, items, scores, g


def compute_metrics(r: Rankings, rel: Relevance, no_image: np.ndarray, rc: "RankConfig") -> dict[str, dict[str, dict[str, float]]]:
    """system -> slice -> metric -> value. ``no_image``: per catalog row, True when the product has no
    image (the ``no_image_products`` slice counts only those products as relevant, ``image_products``
    only the others)."""
    sl = slice_queries(rel, rc)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for system in r.items:
        result[system] = {}
        for slice_name in SLICES:
            idx, preds, gains = [], [], []
            for qi, items, scores, g in _slice_lists(r, rel, no_image, rc, system, slice_name, sl):
                idx.append(np.full(len(items), qi))
                preds.append(scores)
                gains.append(g)
            if idx:
                m = retrieval_metrics(np.concatenate(idx), np.concatenate(preds), np.concatenate(gains),
                                      rc.relevant_min_label, rc.eval_k, rc.recall_k)
            else:
                m = {f"ndcg_at_{rc.eval_k}": float("nan"), "mrr": float("nan"), f"recall_at_{rc.recall_k}": float("nan"),
                     "queries": 0}
            result[system][slice_name] = m
    return result


def per_query(r: Rankings, rel: Relevance, no_image: np.ndarray, rc: "RankConfig",
              metric: str | None = None) -> dict[str, dict[str, dict[int, float]]]:
    """system -> slice -> {query index: ``metric``} (default NDCG@eval_k) for the queries of each slice."""
    from mmpipeline.rank.metrics import query_metrics

    metric = metric or f"ndcg_at_{rc.eval_k}"
    sl = slice_queries(rel, rc)
    out: dict[str, dict[str, dict[int, float]]] = {}
    for system in r.items:
        out[system] = {}
        for slice_name in SLICES:
            vals = {}
            for qi, items, scores, g in _slice_lists(r, rel, no_image, rc, system, slice_name, sl):
                m = query_metrics(np.asarray(scores, np.float64), g, rc.relevant_min_label, rc.eval_k, rc.recall_k)
                if m is not None:
                    vals[qi] = m[metric]
            out[system][slice_name] = vals
    return out


def versus(pq: dict[str, dict[str, dict[int, float]]], system: str, others: list[str],
           eps: float = 1e-9) -> dict[str, dict[str, dict[str, float]]]:
    """Per-query wins / losses / ties of ``system`` against each of ``others`` per slice, with the
    mean difference (``delta``) over the slice's queries: other -> slice -> counts."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for other in others:
        if other == system or other not in pq:
            continue
        out[other] = {}
        for slice_name, mine in pq[system].items():
            theirs = pq[other].get(slice_name, {})
            common = sorted(set(mine) & set(theirs))
            d = np.array([mine[q] - theirs[q] for q in common], dtype=np.float64)
            out[other][slice_name] = {"queries": len(common), "wins": int((d > eps).sum()),
                                      "losses": int((d < -eps).sum()), "ties": int((np.abs(d) <= eps).sum()),
                                      "delta": float(d.mean()) if len(d) else float("nan")}
    return out


def calibrated_rmse(valid_scores: np.ndarray, valid_grades: np.ndarray, test_scores: np.ndarray,
                    test_grades: np.ndarray, grade_range: tuple[float, float], mean_grade: float) -> dict[str, float]:
    """RMSE on test pairs of a monotone (isotonic) score->grade calibration fitted on validation pairs
    (clipped to ``grade_range``; a ranking score is monotone in relevance, not linear in the grade),
    next to the RMSE of a linear calibration (``rmse_linear``) and of always predicting ``mean_grade``."""
    from sklearn.isotonic import IsotonicRegression

    sv, gv = np.asarray(valid_scores, float), np.asarray(valid_grades, float)
    st, gt = np.asarray(test_scores, float), np.asarray(test_grades, float)
    a, b = np.polyfit(sv, gv, 1) if np.std(sv) > 0 else (0.0, float(gv.mean()))
    linear = np.clip(a * st + b, grade_range[0], grade_range[1])
    if np.std(sv) > 0:
        iso = IsotonicRegression(y_min=grade_range[0], y_max=grade_range[1], increasing=True, out_of_bounds="clip")
        pred = iso.fit(sv, gv).predict(st)
    else:
        pred = np.full(len(st), float(gv.mean()))
    return {"rmse": float(np.sqrt(np.mean((pred - gt) ** 2))), "rmse_linear": float(np.sqrt(np.mean((linear - gt) ** 2))),
            "rmse_mean_baseline": float(np.sqrt(np.mean((mean_grade - gt) ** 2))), "rmse_pairs": int(len(gt))}


def grade_rmse(scorer: Scorer, featurizer: PairFeaturizer, df: pd.DataFrame) -> dict[str, float]:
    """:func:`calibrated_rmse` of ``scorer`` on the judged pairs of ``df`` (calibrated on the valid
    split, measured on the test split, mean grade of the train split as the baseline)."""
    judged = df[(df["source"] == "judgment") & df["grade"].notna()]
    parts = {s: judged[judged["split"] == s] for s in ("train", "valid", "test")}
    if parts["valid"].empty or parts["test"].empty:
        return {}

    def scores(p: pd.DataFrame) -> np.ndarray:
        return scorer(featurizer.arrays(p["query_norm"].fillna("").tolist(), p["query_id"].tolist(), p["product_id"].tolist()))

    gv = parts["valid"]["grade"].to_numpy(float)
    mean_grade = float(parts["train"]["grade"].mean()) if len(parts["train"]) else float(gv.mean())
    return calibrated_rmse(scores(parts["valid"]), gv, scores(parts["test"]), parts["test"]["grade"].to_numpy(float),
                           (float(judged["grade"].min()), float(judged["grade"].max())), mean_grade)


def evaluate(featurizer: PairFeaturizer, df: pd.DataFrame, models: dict[str, Any], rc: "RankConfig",
             split: str = "test", progress: bool = True, candidates: CandidateGenerator | None = None,
             keep_rankings: bool = False) -> dict[str, Any]:
    """Whole-catalog metrics for the baselines and ``models`` (name -> model) on ``split`` queries
    (with ``keep_rankings``, also the ``rankings`` and the ``relevance`` they were scored against)."""
    rel = Relevance.from_training_data(df, featurizer, split, rc.max_eval_queries)
    scorers = {name: scorer_for(m, rc.score_batch_size) for name, m in models.items()}
    rankings, info = rank_catalog(featurizer, rel, scorers, rc, progress, candidates)
    no_image = featurizer.has_image <= 0
    metrics = compute_metrics(rankings, rel, no_image, rc)
    pq = per_query(rankings, rel, no_image, rc)
    vs = {name: versus(pq, name, list(rankings.items)) for name in scorers}
    rmse = {}
    for name, s in scorers.items():  # the grade head's prediction where the model has one, else the ranking score
        gs = grade_scorer_for(models[name], rc.score_batch_size)
        rmse[name] = grade_rmse(gs or s, featurizer, df)
        if gs is not None and rmse[name]:
            rmse[name]["rmse_rank_score"] = grade_rmse(s, featurizer, df)["rmse"]
        if rmse[name]:  # numeric like every entry (MLflow metrics): 1.0 = the grade head's prediction
            rmse[name]["grade_head"] = 1.0 if gs is not None else 0.0
    out = {"metrics": metrics, "rmse": rmse, "queries": len(rel.query_ids), "versus": vs,
           "baselines": list(applicable_baselines(featurizer)), **info}
    if keep_rankings:
        out.update(rankings=rankings, relevance=rel)
    return out
