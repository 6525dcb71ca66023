"""The publish stage: the ranking becomes the served search index, safely.

``run(ctx)`` (stage ``publish``): read ``gold.search_ranking`` for the run date (pinned to one Delta
version), validate it with Great Expectations (:mod:`mmpipeline.score.checks`: coverage of the run's
own query set, product ids in the catalog of that date, score sanity, the expected model version;
results stored in ``ops.validation``, Data Docs under the lake), and only if every check passes
overwrite ``gold.search_index`` -- the feed the online index loads -- with it in one Delta commit.
A failed check records ``reject`` and raises: ``gold.search_index`` is untouched, so the previous
version stays current. A run date older than the one served is refused unless forced
(``--param force=true``); publishing a ranking identical to the served one is a no-op
(:func:`publish_decision`, pure).

The index's event log, its self-healing sequence (pending -> commit -> current), reconcile,
rollback and status live in :mod:`mmpipeline.score.index`; the search CLI in :mod:`mmpipeline.score.search`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mmpipeline.config import Config
from mmpipeline.context import RunContext, StageError
from mmpipeline.score.dedupe import DUPLICATES
from mmpipeline.score.index import INDEX, append_event, current_event, event_detail, reconcile

log = logging.getLogger(__name__)

RANKING = "gold.search_ranking"


def _score_run(lake, run_date: dt.date) -> dict[str, Any] | None:
    if not lake.exists("ops.score_runs"):
        return None
    runs = lake.read_pandas("ops.score_runs")
    runs = runs[pd.to_datetime(runs["run_date"]).dt.date == run_date]
    return None if not len(runs) else runs.iloc[-1].to_dict()


def read_ranking(lake, run_date: dt.date, version: int | None = None):
    """One run date of gold.search_ranking at a pinned Delta version, as a Spark DataFrame."""
    from pyspark.sql import functions as F

    return lake.read(RANKING, version=version).where(F.col("run_date") == F.lit(run_date).cast("date"))


def content_fingerprint(df) -> str:
    """An order-independent fingerprint of a Spark DataFrame's rows (count and two hash sums)."""
    from pyspark.sql import functions as F

    cols = sorted(df.columns)
    row = df.agg(F.count(F.lit(1)).alias("n"),
                 F.sum(F.pmod(F.xxhash64(*cols), F.lit(1_000_000_007))).alias("h1"),
                 F.sum(F.pmod(F.hash(*cols).cast("long"), F.lit(998_244_353))).alias("h2")).collect()[0]
    return f"{int(row['n'])}:{int(row['h1'] or 0)}:{int(row['h2'] or 0)}"


@dataclass(frozen=True)
class PublishDecision:
    """What publishing run ``run_date`` should do given what is served: ``refuse`` (with the one-line
    reason), ``noop`` (it already is the current index) or ``publish`` (``forced`` when it replaces a
    newer run)."""

    action: str  # refuse | noop | publish
    reason: str
    forced: bool = False


def publish_decision(run_date: dt.date, cur: dict[str, Any] | None, ranking_version: int, force: bool,
                     fingerprint: str | None = None) -> PublishDecision:
    """Pure: the served event ``cur`` (or None), the ranking's Delta version and, once computed, its
    content fingerprint in; the decision out. Without ``fingerprint`` only the version is compared
    (the stage calls again with it before validating, to skip the checks for identical rows)."""
    if cur is None:
        return PublishDecision("publish", f"nothing is served yet: publish run {run_date}")
    cur_rd = pd.to_datetime(cur["run_date"]).date()
    if run_date < cur_rd and not force:
        return PublishDecision("refuse", (
            f"publish refused: run {run_date} is older than the served index (run {cur_rd}, {INDEX} version "
            f"{int(cur['index_version'])}); pass --param force=true to publish it anyway, or "
            f"'mmpipeline rollback --to-run-date {run_date}' to serve an earlier published run again"))
    if cur_rd == run_date and cur["action"] == "publish":
        if pd.notna(cur.get("ranking_version")) and int(cur["ranking_version"]) == ranking_version:
            return PublishDecision("noop", f"run {run_date} (ranking version {ranking_version}) is already the "
                                           f"current index version {cur['index_version']}")
        if fingerprint is not None and event_detail(cur).get("fingerprint") == fingerprint:
            return PublishDecision("noop", f"run {run_date} is already the current index (version "
                                           f"{cur['index_version']}) with identical rows")
    return PublishDecision("publish", f"publish run {run_date}", forced=bool(force and run_date < cur_rd))


# ----------------------------------------------------------------------------------------- publish


def _truthy(v: Any) -> bool:
    return v is True or str(v).strip().lower() in ("1", "true", "yes", "y", "on")


def expected_model(cfg: Config, alias: str) -> tuple[str, str | None, str]:
    """(model name, version behind ``alias`` or None, note) from the model registry."""
    from mmpipeline.rank.registry import alias_version

    name = cfg.mlflow.model_name
    try:
        mv = alias_version(cfg, alias)
    except Exception as e:  # noqa: BLE001 - an unreachable registry fails the check, not the process
        return name, None, f"could not read alias {alias!r} of {name} from the registry ({type(e).__name__}: {e})"
    if mv is None:
        return name, None, f"no version of {name} has alias {alias!r}"
    return name, str(mv.version), f"{name}@{alias} is version {mv.version}"


def run(ctx: RunContext) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from mmpipeline.ops import print_table
    from mmpipeline.score.checks import run_inputs, validate_ranking
    from mmpipeline.validate import store_reports

    cfg = ctx.cfg
    lake = ctx.spark_lake()
    rd = ctx.run_date
    force = _truthy(ctx.options.get("force", False))
    reconcile(lake)
    if not lake.exists(RANKING):
        raise StageError(f"{RANKING} does not exist: run the score stage first")
    ranking_version = lake.version(RANKING)
    duplicates_version = lake.version(DUPLICATES) if lake.exists(DUPLICATES) else None
    cur = current_event(lake)
    cur_rd = None if cur is None else pd.to_datetime(cur["run_date"]).date()
    decision = publish_decision(rd, cur, ranking_version, force)
    if decision.action == "refuse":
        raise StageError(decision.reason)
    if decision.action == "noop":
        log.info("publish: %s; nothing to do", decision.reason)
        return {"published": True, "already_current": True, "index_version": int(cur["index_version"]),
                "queries": int(cur["queries"]), "rows": int(cur["rows"])}

    ranking = read_ranking(lake, rd, ranking_version).persist()
    try:
        stats = ranking.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("query_id").alias("queries"),
                            F.collect_set("model_version").alias("versions"),
                            F.first("model_name", ignorenulls=True).alias("model_name")).collect()[0]
        n_rows, n_queries = int(stats["rows"]), int(stats["queries"])
        if not n_rows:
            raise StageError(f"{RANKING} has no rows for run date {rd}: run the score stage for {rd} first")
        versions, model_name = sorted(stats["versions"]), stats["model_name"]
        fingerprint = content_fingerprint(ranking)
        decision = publish_decision(rd, cur, ranking_version, force, fingerprint)
        if decision.action == "noop":
            log.info("publish: %s; nothing to do", decision.reason)
            return {"published": True, "already_current": True, "index_version": int(cur["index_version"]),
                    "queries": int(cur["queries"]), "rows": int(cur["rows"])}
        alias = ctx.model_alias or cfg.score.model_alias
        exp_name, exp_version, model_note = expected_model(cfg, alias)
        srun = _score_run(lake, rd)
        if srun is not None and exp_version is not None and str(srun.get("model_version")) != exp_version:
            model_note += (f"; ops.score_runs says run {rd} was scored with v{srun.get('model_version')}: "
                           f"re-run the score stage for {rd}")
        inputs = run_inputs(cfg, lake, rd)
        report = validate_ranking(ranking, rd, cfg, inputs, lake, exp_name, exp_version, model_note,
                                  lake_root=cfg.lake.root)
        store_reports(lake, rd, [report])
        print_table(f"publish checks: {RANKING} run {rd} (version {ranking_version}, {n_rows:,} rows)",
                    ["expectation", "column", "ok", "observed"],
                    [[r.check_name, r.column, "yes" if r.success else "NO", r.observed_value[:70]] for r in report.results])
        common = dict(run_date=rd, ranking_version=ranking_version, model_name=model_name,
                      model_version=",".join(versions), queries=n_queries, rows=n_rows)
        if report.failed_critical:
            detail = "; ".join(f"{r.check_name}: {r.observed_value}" for r in report.failed_critical)
            append_event(lake, action="reject", status="rejected", detail={"note": detail[:4000]}, **common)
            still = (f"index version {int(cur['index_version'])} (run {cur_rd})" if cur else "unpublished")
            raise StageError(f"publish refused for run {rd}: {report.message(include_warnings=False)}\n"
                             f"The served index stays {still}.")
        vectors_version = lake.version("gold.product_vectors")
        op_id = uuid.uuid4().hex
        base_version = lake.version(INDEX)
        detail = {"op_id": op_id, "base_version": base_version, "checks": len(report.results),
                  "fingerprint": fingerprint, "forced": decision.forced,
                  "catalog_version": inputs.catalog_version, "query_set": len(inputs.query_set),
                  "duplicates_version": duplicates_version,
                  "previous_index_version": None if cur is None else int(cur["index_version"])}
        append_event(lake, action="publish", status="pending", vectors_version=vectors_version, detail=detail,
                     **common)
        index_version = lake.write(INDEX, ranking, mode="overwrite",
                                   metadata={"stage": "publish", "run_date": rd.isoformat(),
                                             "ranking_version": ranking_version, "publish_op_id": op_id})
    finally:
        ranking.unpersist()
    append_event(lake, action="publish", status="current", index_version=index_version,
                 vectors_version=vectors_version, detail=detail, **common)
    log.info("publish: run %s is now the current index (%s version %d; %d queries, %d rows, model %s v%s)",
             rd, INDEX, index_version, n_queries, n_rows, model_name, ",".join(versions))
    return {"published": True, "index_version": index_version, "ranking_version": ranking_version,
            "queries": n_queries, "rows": n_rows, "checks": len(report.results), "forced": detail["forced"],
            "model": f"{model_name}/{','.join(versions)}", "data_docs": report.data_docs}
