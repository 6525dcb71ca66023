"""Evaluation on held-out queries over the whole catalog, and champion gating (``mmpipeline run evaluate``).

For every held-out (test-split) query, each system ranks the **whole catalog**:

* ``bm25``, ``text_cosine``, ``image_cosine``: exact scores against every product;
* model systems (``challenger``, ``champion``, bench variants): candidate retrieval (BM25 top-K
  union text top-K union image top-K) then rerank with the model; products outside the candidates
  rank below every candidate. The candidates come from the score stage's own
  :class:`~mmpipeline.retrieval.candidates.CandidateGenerator` with ``score.candidates_k``,
  ``score.candidate_sources`` and ``score.ann``, so the gate measures the candidate set that is published.

Metrics (definitions of torchmetrics' retrieval metrics, see mmpipeline.rank.metrics): NDCG@k with graded gains, MRR and Recall@K with binary relevance
(normalised grade >= ``rank.relevant_min_label``), overall and per slice: short / long queries and
products without images (relevance restricted to products that have no image). RMSE of predicted
grades on judged test pairs, with a linear score->grade calibration fitted on the validation split,
next to the RMSE of predicting the mean training grade.

Gating: the challenger becomes champion when there is no champion, or when it beats the champion on
the primary metric by more than ``rank.promote_margin`` (strictly: a tie never promotes) and no slice
regresses by more than ``rank.slice_tolerance``. The decision and its reasons go to MLflow and
``ops.rank_decisions``.

Evaluate is a transaction keyed by (run date, challenger version): it writes its ops rows first and
moves the ``champion`` alias last, so a process that dies in between leaves a recorded decision and
a retry completes it -- applies the recorded decision (moving the alias if it said promote) and
returns the same result, with the same reasons, without evaluating again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from mmpipeline.rank.metrics import FLOOR, retrieval_metrics
from mmpipeline.retrieval.candidates import CandidateGenerator
from mmpipeline.retrieval.features import PairFeaturizer, arrays_to_frame
from mmpipeline.retrieval.text import tokenize

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import RankConfig
    from mmpipeline.context import RunContext

log = logging.getLogger(__name__)

BASELINES = ("bm25", "text_cosine", "image_cosine")
SLICES = ("all", "short_queries", "long_queries", "no_image_products")
Scorer = Callable[[dict[str, np.ndarray]], np.ndarray]


def scorer_for(model: Any, batch_size: int = 8192) -> Scorer:
    """A function arrays -> scores for a FusionRanker, a LoadedRanker or any ``predict(df)`` model."""
    from mmpipeline.rank.model import FusionRanker

    inner = model
    if hasattr(model, "pyfunc"):  # LoadedRanker
        try:
            inner = model.model
        except Exception:  # a foreign pyfunc model: go through the DataFrame interface
            inner = model
    if isinstance(inner, FusionRanker):
        return lambda a: inner.score_arrays(a, batch_size)
    return lambda a: np.asarray(model.predict(arrays_to_frame(a)), dtype=np.float64).reshape(-1)


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
    bar = tqdm(total=len(rel.query_ids), desc="evaluate", unit="query", disable=not progress, leave=False)
    for s in range(0, len(rel.query_ids), rc.eval_batch_queries):
        qids = rel.query_ids[s:s + rc.eval_batch_queries]
        qtexts = rel.queries[s:s + rc.eval_batch_queries]
        qvec, has_q = featurizer.query_matrix(qtexts, qids)
        full = {
            "bm25": np.stack([featurizer.bm25_scores(q) for q in qtexts]).astype(np.float64),
            "text_cosine": np.where(has_t[None, :], qvec @ featurizer.p_text.T, -np.inf).astype(np.float64),
            "image_cosine": np.where(has_i[None, :], qvec @ featurizer.p_image.T, -np.inf).astype(np.float64),
        }
        full["bm25"][full["bm25"] <= 0] = -np.inf  # no query token in the title: not retrieved
        for b in range(len(qids)):
            if not has_q[b]:
                full["text_cosine"][b] = full["image_cosine"][b] = -np.inf
        cand_rows, cand_q = [], []
        cand_ids = candidates.candidate_lists(qids, qtexts, qvec, has_q)
        for b in range(len(qids)):
            judged = rel.rows[s + b]
            tops = {name: _topk(full[name][b], max(depth, rc.candidates_k)) for name in BASELINES}
            for name in BASELINES:
                items = np.unique(np.concatenate([tops[name][:depth], judged]))
                sc = full[name][b][items]
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
        bar.update(len(qids))
    bar.close()
    return out, {"mean_candidates": float(np.mean(n_cand)) if n_cand else 0.0,
                 "candidate_recall": _candidate_recall(out, rel, rc, models)}


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


def slice_queries(rel: Relevance, featurizer: PairFeaturizer, rc: "RankConfig") -> dict[str, np.ndarray]:
    ntok = np.array([len(tokenize(q)) for q in rel.queries])
    return {"all": np.ones(len(ntok), bool), "short_queries": ntok < rc.long_query_tokens,
            "long_queries": ntok >= rc.long_query_tokens}


def compute_metrics(r: Rankings, rel: Relevance, featurizer: PairFeaturizer, rc: "RankConfig") -> dict[str, dict[str, dict[str, float]]]:
    """system -> slice -> metric -> value."""
    sl = slice_queries(rel, featurizer, rc)
    no_image = featurizer.has_image <= 0
    result: dict[str, dict[str, dict[str, float]]] = {}
    for system in r.items:
        result[system] = {}
        for slice_name in SLICES:
            idx, preds, gains = [], [], []
            for qi, (items, scores) in enumerate(zip(r.items[system], r.scores[system])):
                gmap = dict(zip(rel.rows[qi].tolist(), rel.gains[qi].tolist()))
                g = np.array([gmap.get(int(i), 0.0) for i in items])
                if slice_name == "no_image_products":
                    g = np.where(no_image[items], g, 0.0)
                    if not (g >= rc.relevant_min_label).any():
                        continue
                elif not sl[slice_name][qi]:
                    continue
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


def grade_rmse(scorer: Scorer, featurizer: PairFeaturizer, df: pd.DataFrame) -> dict[str, float]:
    """RMSE of predicted grades on judged test pairs (linear score->grade map fitted on valid pairs),
    and of the mean-training-grade predictor, for comparison."""
    judged = df[(df["source"] == "judgment") & df["grade"].notna()]
    parts = {s: judged[judged["split"] == s] for s in ("train", "valid", "test")}
    if parts["valid"].empty or parts["test"].empty:
        return {}

    def scores(p: pd.DataFrame) -> np.ndarray:
        return scorer(featurizer.arrays(p["query_norm"].fillna("").tolist(), p["query_id"].tolist(), p["product_id"].tolist()))

    sv, st = scores(parts["valid"]), scores(parts["test"])
    gv, gt = parts["valid"]["grade"].to_numpy(float), parts["test"]["grade"].to_numpy(float)
    a, b = np.polyfit(sv, gv, 1) if np.std(sv) > 0 else (0.0, float(gv.mean()))
    lo, hi = float(judged["grade"].min()), float(judged["grade"].max())
    pred = np.clip(a * st + b, lo, hi)
    mean_grade = float(parts["train"]["grade"].mean()) if len(parts["train"]) else float(gv.mean())
    return {"rmse": float(np.sqrt(np.mean((pred - gt) ** 2))),
            "rmse_mean_baseline": float(np.sqrt(np.mean((mean_grade - gt) ** 2))), "rmse_pairs": int(len(gt))}


def evaluate(featurizer: PairFeaturizer, df: pd.DataFrame, models: dict[str, Any], rc: "RankConfig",
             split: str = "test", progress: bool = True, candidates: CandidateGenerator | None = None) -> dict[str, Any]:
    """Whole-catalog metrics for the baselines and ``models`` (name -> model) on ``split`` queries."""
    rel = Relevance.from_training_data(df, featurizer, split, rc.max_eval_queries)
    scorers = {name: scorer_for(m, rc.score_batch_size) for name, m in models.items()}
    rankings, info = rank_catalog(featurizer, rel, scorers, rc, progress, candidates)
    metrics = compute_metrics(rankings, rel, featurizer, rc)
    rmse = {name: grade_rmse(s, featurizer, df) for name, s in scorers.items()}
    return {"metrics": metrics, "rmse": rmse, "queries": len(rel.query_ids), **info}


# ------------------------------------------------------------------------------------ gating


def decide(challenger: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None,
           rc: "RankConfig") -> tuple[bool, list[str]]:
    """Promotion decision from slice -> metric -> value of challenger and champion."""
    pm = rc.primary_metric
    if champion is None:
        return True, ["no current champion: the first evaluated model becomes champion"]
    c_val, h_val = challenger["all"].get(pm, float("nan")), champion["all"].get(pm, float("nan"))
    reasons, ok = [], True
    if not np.isfinite(c_val):
        return False, [f"challenger {pm} is not finite ({c_val})"]
    if not np.isfinite(h_val) or c_val > h_val + rc.promote_margin:
        reasons.append(f"{pm}: challenger {c_val:.4f} > champion {h_val:.4f} + margin {rc.promote_margin}")
    else:
        ok = False
        reasons.append(f"{pm}: challenger {c_val:.4f} does not beat champion {h_val:.4f} by more than margin "
                       f"{rc.promote_margin}" + (" (a tie)" if c_val == h_val else ""))
    for slice_name in SLICES[1:]:
        c = challenger.get(slice_name, {}).get(pm, float("nan"))
        h = (champion.get(slice_name) or {}).get(pm, float("nan"))
        if not (np.isfinite(c) and np.isfinite(h)):
            continue
        if c < h - rc.slice_tolerance:
            ok = False
            reasons.append(f"slice {slice_name} regresses: {pm} {c:.4f} < champion {h:.4f} - tolerance {rc.slice_tolerance}")
        else:
            reasons.append(f"slice {slice_name} ok: {pm} {c:.4f} vs champion {h:.4f}")
    return ok, reasons


# ------------------------------------------------------------------------------------ stage


def _metrics_rows(result: dict[str, Any], ctx: "RunContext", name: str, versions: dict[str, str], run_id: str) -> pd.DataFrame:
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for system, slices in result["metrics"].items():
        for slice_name, ms in slices.items():
            for metric, v in ms.items():
                if metric == "queries":
                    continue
                rows.append({"run_date": ctx.run_date, "model_name": name, "model_version": versions.get(system, ""),
                             "system": system, "slice": slice_name, "metric": metric, "value": float(v),
                             "queries": int(ms.get("queries", 0)), "mlflow_run_id": run_id, "evaluated_at": now})
    for system, r in result["rmse"].items():
        for metric in ("rmse", "rmse_mean_baseline"):
            if metric in r:
                rows.append({"run_date": ctx.run_date, "model_name": name, "model_version": versions.get(system, ""),
                             "system": system, "slice": "judged_pairs", "metric": metric, "value": r[metric],
                             "queries": int(r.get("rmse_pairs", 0)), "mlflow_run_id": run_id, "evaluated_at": now})
    return pd.DataFrame(rows)


def recorded_decision(lake, run_date: dt.date, challenger_version: str, model_name: str) -> dict[str, Any] | None:
    """The decision an earlier evaluate run recorded for (run date, challenger version), or None."""
    if not lake.exists("ops.rank_decisions"):
        return None
    d = lake.read_pandas("ops.rank_decisions")
    d = d[(pd.to_datetime(d["run_date"]).dt.date == run_date) & (d["challenger_version"].astype(str) == str(challenger_version))
          & (d["model_name"].astype(str) == model_name)]
    if not len(d):
        return None
    return d.sort_values("decided_at", kind="stable").iloc[-1].to_dict()


def _apply_recorded(ctx: "RunContext", rec: dict[str, Any]) -> dict[str, Any]:
    """Finish an evaluation already decided for this run date and challenger (a retry / re-run)."""
    from mmpipeline.rank.registry import alias_version, client
    from mmpipeline.rank.train import CHAMPION

    cfg = ctx.cfg
    name = cfg.mlflow.model_name
    version = str(rec["challenger_version"])
    promote = bool(rec["promoted"])
    reasons = json.loads(rec["reasons"]) if isinstance(rec.get("reasons"), str) else list(rec.get("reasons") or [])
    c = client(cfg)
    c.set_model_version_tag(name, version, "evaluation_run_id", str(rec.get("mlflow_run_id")))
    c.set_model_version_tag(name, version, "gate_decision", "promoted" if promote else "rejected")
    if promote:
        cur = alias_version(cfg, CHAMPION)
        if cur is None or str(cur.version) != version:
            c.set_registered_model_alias(name, CHAMPION, version)  # the earlier run died before this
            log.info("evaluate: completed the recorded promotion of %s version %s to %s", name, version, CHAMPION)
    champ = rec.get("champion_version")
    champ = None if champ is None or (not isinstance(champ, str) and pd.isna(champ)) else str(champ)
    log.info("evaluate: run %s already decided for %s version %s (%s); not evaluating again", ctx.run_date, name,
             version, "promote" if promote else "keep champion")
    from mmpipeline.ops import print_table

    print_table(f"gate (recorded {ctx.run_date}): " + ("PROMOTE" if promote else "KEEP CHAMPION"), ["reason"],
                [[r] for r in reasons])
    return {"challenger_version": version, "champion_version_before": champ, "promoted": promote,
            "reasons": reasons, "mlflow_run_id": rec.get("mlflow_run_id"), "recorded": True}


def run(ctx: "RunContext") -> dict[str, Any]:
    import mlflow

    from mmpipeline.context import StageError
    from mmpipeline.ops import print_table
    from mmpipeline.rank.registry import alias_version, client, load_ranker, setup_mlflow
    from mmpipeline.rank.train import CHALLENGER, CHAMPION, featurizer_for, read_training_data

    cfg, rc = ctx.cfg, ctx.cfg.rank
    name = cfg.mlflow.model_name
    alias = ctx.model_alias or CHALLENGER
    setup_mlflow(cfg)
    try:
        challenger = load_ranker(cfg, alias)
    except LookupError as e:
        raise StageError(str(e)) from None
    champ_mv = alias_version(cfg, CHAMPION)
    rec = recorded_decision(ctx.lake, ctx.run_date, challenger.version, name)
    # --full-refresh evaluates again, except a champion against itself (that would overwrite its record)
    if rec is not None and (not ctx.full_refresh or (champ_mv is not None and str(champ_mv.version) == challenger.version)):
        return _apply_recorded(ctx, rec)
    models: dict[str, Any] = {"challenger": challenger}
    versions = {"challenger": challenger.version}
    if champ_mv is not None and str(champ_mv.version) != challenger.version:
        models["champion"] = load_ranker(cfg, CHAMPION)
        versions["champion"] = str(champ_mv.version)
    df, table_version, meta = read_training_data(ctx)
    featurizer = featurizer_for(ctx, meta)
    sc = cfg.score  # the score stage's retrieval: the gate measures the candidate set that is published
    candidates = CandidateGenerator.from_featurizer(featurizer, sc.candidates_k, list(sc.candidate_sources), sc.ann,
                                                    sc.query_batch_size)
    result = evaluate(featurizer, df, models, rc, candidates=candidates)
    if result["queries"] == 0:
        raise StageError("no held-out (test split) queries with judgments to evaluate on")
    m = result["metrics"]
    pm = rc.primary_metric
    if champ_mv is not None and str(champ_mv.version) == challenger.version:
        promote, reasons = False, [f"version {challenger.version} is already the champion"]
    else:
        promote, reasons = decide(m["challenger"], m.get("champion"), rc)
    with mlflow.start_run(run_name=f"evaluate-{ctx.run_date}-v{challenger.version}") as mrun:
        run_id = mrun.info.run_id
        mlflow.set_tags({"stage": "evaluate", "run_date": str(ctx.run_date), "challenger_version": challenger.version,
                         "champion_version": versions.get("champion", ""), "promoted": str(promote),
                         "decision": "promote" if promote else "keep champion"})
        mlflow.log_params({"primary_metric": pm, "promote_margin": rc.promote_margin,
                           "slice_tolerance": rc.slice_tolerance, "eval_queries": result["queries"],
                           "candidates_k": sc.candidates_k, "training_table_version": table_version,
                           "challenger_run_id": challenger.run_id})
        flat = {f"{system}.{sl}.{metric}": v for system, sls in m.items() for sl, ms in sls.items()
                for metric, v in ms.items() if metric != "queries" and np.isfinite(v)}
        flat.update({f"{system}.{k}": v for system, r in result["rmse"].items() for k, v in r.items() if k != "rmse_pairs"})
        flat.update({"mean_candidates": result["mean_candidates"], "candidate_recall": result["candidate_recall"]})
        mlflow.log_metrics({k: float(v) for k, v in flat.items() if np.isfinite(v)})
        decision = {"promoted": promote, "reasons": reasons, "challenger_version": challenger.version,
                    "champion_version": versions.get("champion"), "primary_metric": pm,
                    "metrics": m, "rmse": result["rmse"]}
        mlflow.log_dict(decision, "decision.json")
        with tempfile.TemporaryDirectory() as td:
            table = pd.DataFrame([{"system": s, "slice": sl, **ms} for s, sls in m.items() for sl, ms in sls.items()])
            table.to_csv(Path(td) / "metrics_by_system_and_slice.csv", index=False)
            _plot_systems(m, pm, Path(td) / "systems.png")
            mlflow.log_artifacts(td, artifact_path="evaluation")
    c = client(cfg)
    for k, v in m["challenger"]["all"].items():  # also on the challenger's own training run
        if k != "queries" and np.isfinite(v):
            c.log_metric(challenger.run_id, f"test_catalog_{k}", float(v))
    c.set_model_version_tag(name, challenger.version, "evaluation_run_id", run_id)
    c.set_model_version_tag(name, challenger.version, f"test_{pm}", f"{m['challenger']['all'].get(pm, float('nan')):.4f}")
    c.set_model_version_tag(name, challenger.version, "gate_decision", "promoted" if promote else "rejected")
    now = dt.datetime.now(dt.timezone.utc)
    # ops rows first, the champion alias last: a retry finds the decision and completes it
    ctx.lake.merge("ops.rank_evaluations", _metrics_rows(result, ctx, name, versions, run_id))
    ctx.lake.merge("ops.rank_decisions", pd.DataFrame([{
        "run_date": ctx.run_date, "model_name": name, "challenger_version": challenger.version,
        "champion_version": versions.get("champion"), "promoted": promote, "primary_metric": pm,
        "challenger_value": m["challenger"]["all"].get(pm), "champion_value": (m.get("champion") or {}).get("all", {}).get(pm),
        "reasons": json.dumps(reasons), "mlflow_run_id": run_id, "decided_at": now}]))
    if promote:
        c.set_registered_model_alias(name, CHAMPION, challenger.version)
        log.info("promoted %s version %s to %s", name, challenger.version, CHAMPION)
    k, rk = rc.eval_k, rc.recall_k
    print_table(f"evaluate {ctx.run_date}: {result['queries']} held-out queries, whole catalog "
                f"({result['mean_candidates']:.0f} candidates/query for the models)",
                ["system", "slice", f"ndcg@{k}", "mrr", f"recall@{rk}", "queries"],
                [[s, sl, ms[f"ndcg_at_{k}"], ms["mrr"], ms[f"recall_at_{rk}"], ms["queries"]]
                 for s, sls in m.items() for sl, ms in sls.items()])
    print_table("gate: " + ("PROMOTE" if promote else "KEEP CHAMPION"), ["reason"], [[r] for r in reasons])
    return {"challenger_version": challenger.version, "champion_version_before": versions.get("champion"),
            "promoted": promote, "reasons": reasons, "mlflow_run_id": run_id, "queries": result["queries"],
            "recorded": False,
            pm: {s: round(sls["all"][pm], 4) for s, sls in m.items()},
            "rmse": {s: {k_: round(v, 4) for k_, v in r.items()} for s, r in result["rmse"].items()}}


def _plot_systems(m: dict[str, dict[str, dict[str, float]]], pm: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(m)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(SLICES)
    for i, sl in enumerate(SLICES):
        ax.bar(np.arange(len(systems)) + i * width, [m[s].get(sl, {}).get(pm, np.nan) for s in systems], width, label=sl)
    ax.set_xticks(np.arange(len(systems)) + 0.4 - width / 2, systems, rotation=20)
    ax.set(title=f"held-out {pm} over the whole catalog", ylabel=pm)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
