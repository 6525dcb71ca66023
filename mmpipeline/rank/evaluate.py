"""The evaluate stage (``mmpipeline run evaluate``): evaluate the challenger and gate promotion.

It loads the challenger (and champion) from the registry and the training data from the lake,
computes whole-catalog metrics with :func:`mmpipeline.rank.evaluation.evaluate` (pure computation),
decides with :func:`mmpipeline.rank.gate.gate_decision` (pure), logs metrics, the decision and
figures (:mod:`mmpipeline.rank.plots`) to MLflow, writes ``ops.rank_evaluations`` and
``ops.rank_decisions`` and moves the ``champion`` alias.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpipeline.rank.evaluation import evaluate
from mmpipeline.rank.gate import gate_decision
from mmpipeline.rank.plots import plot_systems
from mmpipeline.retrieval.candidates import CandidateGenerator

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.context import RunContext

log = logging.getLogger(__name__)


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
    baselines = {b: m[b] for b in result.get("baselines", ()) if b in m}
    promote, reasons = gate_decision(m["challenger"], m.get("champion"), rc, challenger.version,
                                     None if champ_mv is None else str(champ_mv.version), baselines)
    with mlflow.start_run(run_name=f"evaluate-{ctx.run_date}-v{challenger.version}") as mrun:
        run_id = mrun.info.run_id
        mlflow.set_tags({"stage": "evaluate", "run_date": str(ctx.run_date), "challenger_version": challenger.version,
                         "champion_version": versions.get("champion", ""), "promoted": str(promote),
                         "decision": "promote" if promote else "keep champion"})
        mlflow.log_params({"primary_metric": pm, "promote_margin": rc.promote_margin,
                           "slice_tolerance": rc.slice_tolerance, "eval_queries": result["queries"],
                           "slice_regression_max": rc.slice_regression_max, "gate_slices": ",".join(rc.gate_slices),
                           "candidates_k": sc.candidates_k, "training_table_version": table_version,
                           "challenger_run_id": challenger.run_id})
        flat = {f"{system}.{sl}.{metric}": v for system, sls in m.items() for sl, ms in sls.items()
                for metric, v in ms.items() if metric != "queries" and np.isfinite(v)}
        flat.update({f"{system}.{k}": v for system, r in result["rmse"].items() for k, v in r.items() if k != "rmse_pairs"})
        flat.update({"mean_candidates": result["mean_candidates"], "candidate_recall": result["candidate_recall"]})
        # per-slice wins / losses / ties of the challenger against every other system (baselines, champion)
        flat.update({f"challenger_vs_{other}.{sl}.{k_}": v for other, sls in result["versus"].get("challenger", {}).items()
                     for sl, c in sls.items() for k_, v in c.items() if k_ != "queries"})
        mlflow.log_metrics({k: float(v) for k, v in flat.items() if np.isfinite(v)})
        decision = {"promoted": promote, "reasons": reasons, "challenger_version": challenger.version,
                    "champion_version": versions.get("champion"), "primary_metric": pm,
                    "metrics": m, "rmse": result["rmse"], "versus": result["versus"].get("challenger", {})}
        mlflow.log_dict(decision, "decision.json")
        with tempfile.TemporaryDirectory() as td:
            table = pd.DataFrame([{"system": s, "slice": sl, **ms} for s, sls in m.items() for sl, ms in sls.items()])
            table.to_csv(Path(td) / "metrics_by_system_and_slice.csv", index=False)
            plot_systems(m, pm, Path(td) / "systems.png")
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
    vs_rows = [[other, sl, c["wins"], c["losses"], c["ties"], c["delta"]]
               for other, sls in result["versus"].get("challenger", {}).items() for sl, c in sls.items() if c["queries"]]
    if vs_rows:
        print_table(f"challenger vs every system, per slice (per-query ndcg@{rc.eval_k})",
                    ["versus", "slice", "wins", "losses", "ties", "mean delta"], vs_rows)
    print_table("gate: " + ("PROMOTE" if promote else "KEEP CHAMPION"), ["reason"], [[r] for r in reasons])
    return {"challenger_version": challenger.version, "champion_version_before": versions.get("champion"),
            "promoted": promote, "reasons": reasons, "mlflow_run_id": run_id, "queries": result["queries"],
            "recorded": False,
            pm: {s: round(sls["all"][pm], 4) for s, sls in m.items()},
            "rmse": {s: {k_: round(v, 4) for k_, v in r.items()} for s, r in result["rmse"].items()}}
