"""The ``validate`` stage: GE suites on the silver tables of the run, results to ops.validation and
Data Docs, a readable table on stdout; a failed critical check stops the run (StageError)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any

from mmpipeline.context import RunContext, StageError
from mmpipeline.ops import print_table
from mmpipeline.schemas import table
from mmpipeline.validate.checks import ValidationReport
from mmpipeline.validate.project import GXProject
from mmpipeline.validate.store import store_reports
from mmpipeline.validate.suites import ROW_COUNT_CHECK, quarantine_check, silver_checks

log = logging.getLogger(__name__)


def previous_row_count(lake, table_name: str, run_date: dt.date) -> tuple[int | None, str]:
    """Row count observed by the latest earlier run's row-count check (from ops.validation)."""
    if not lake.exists("ops.validation"):
        return None, ""
    t = lake.read_arrow("ops.validation", columns=["run_date", "table_name", "check_name", "details"],
                        filters=[("table_name", "=", table_name), ("check_name", "=", ROW_COUNT_CHECK),
                                 ("run_date", "<", run_date)])
    best: tuple[dt.date, int] | None = None
    for row in t.to_pylist():
        try:
            n = json.loads(row["details"] or "{}").get("result", {}).get("observed_value")
        except ValueError:
            continue
        if isinstance(n, int) and (best is None or row["run_date"] > best[0]):
            best = (row["run_date"], n)
    return (best[1], str(best[0])) if best else (None, "")


def previous_row_count_from_history(lake, table_name: str, run_date: dt.date) -> tuple[int | None, str]:
    """Fallback: the table's rows at its latest Delta commit made for an earlier run date.

    Commits written by the stages carry ``run_date`` in their commit metadata. For tables
    partitioned by run date, the rows of that earlier run's partition at that version are counted.
    """
    best: tuple[str, int] | None = None
    for h in lake.history(table_name):
        rd = (h.get("metadata") or {}).get("run_date")
        if not rd or str(rd) >= str(run_date):
            continue
        if best is None or (str(rd), h["version"]) > best:
            best = (str(rd), int(h["version"]))
    if best is None:
        return None, ""
    filters = [("run_date", "=", dt.date.fromisoformat(best[0]))] if "run_date" in table(table_name).partition_by else None
    n = lake.count(table_name, version=best[1], filters=filters)
    return n, f"{best[0]} (Delta version {best[1]})"


def partition_count(lake, name: str, run_date: dt.date) -> int | None:
    """Rows of ``name`` in the run date's partition (delta-rs, no Spark); None when absent."""
    if not lake.exists(name) or "run_date" not in table(name).column_names:
        return None
    return lake.count(name, filters=[("run_date", "=", run_date)])


def clean_rows_in(lake, table_name: str, run_date: dt.date) -> int | None:
    """Rows the clean stage read for ``table_name`` on the run date (its row accounting)."""
    if not lake.exists("ops.row_accounting"):
        return None
    t = lake.read_arrow("ops.row_accounting", columns=["rows_in"],
                        filters=[("run_date", "=", run_date), ("stage", "=", "clean"), ("table_name", "=", table_name)])
    return int(sum(v for v in t.column("rows_in").to_pylist() if v is not None)) if t.num_rows else None


def _run_frame(lake, name: str, run_date: dt.date):
    """The rows a run validates: the run date's partition for partitioned tables, else the table."""
    from pyspark.sql import functions as F

    df = lake.read(name)
    if "run_date" in table(name).partition_by:
        df = df.where(F.col("run_date") == F.lit(run_date))
    return df


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, q = ctx.cfg, ctx.cfg.quality
    t0 = time.perf_counter()
    lake = ctx.spark_lake()
    present = [n for n in q.tables if lake.exists(n)]
    for n in q.tables:
        if n not in present:
            log.info("validate: %s does not exist, skipped", n)
    if not present:
        raise StageError(f"validate: none of {', '.join(q.tables)} exists under {cfg.lake.root}; run clean first")
    project = GXProject.for_lake(cfg.lake.root, spark=lake.spark)
    reports: list[ValidationReport] = []
    for name in present:
        spec = table(name)
        entity = name.partition(".")[2]
        if "run_date" in spec.partition_by and entity not in cfg.sources \
                and not partition_count(lake, name, ctx.run_date):
            log.info("validate: %s has no partition for %s and no %s source is configured, skipped",
                     name, ctx.run_date, entity)
            continue
        prev, prev_label = previous_row_count(lake, name, ctx.run_date)
        if prev is None:
            prev, prev_label = previous_row_count_from_history(lake, name, ctx.run_date)
        checks = silver_checks(spec, cfg, prev, prev_label)
        reports.append(project.validate(_run_frame(lake, name, ctx.run_date), name, name, checks,
                                        run_date=ctx.run_date, data_docs=q.data_docs))
        qname = f"quarantine.{entity}"
        quarantined = partition_count(lake, qname, ctx.run_date)
        if not quarantined:  # no quarantine table or nothing quarantined this run: share 0, nothing to check
            continue
        rows_in, source = clean_rows_in(lake, name, ctx.run_date), "ops.row_accounting (clean)"
        if not rows_in:
            rows_in, source = partition_count(lake, f"bronze.{entity}", ctx.run_date), f"bronze.{entity}"
        if not rows_in:
            rows_in, source = (reports[-1].rows or 0) + quarantined, f"{name} + {qname}"
        if rows_in:
            reports.append(project.validate(_run_frame(lake, qname, ctx.run_date), qname, qname,
                                            [quarantine_check(rows_in, cfg, source)], run_date=ctx.run_date,
                                            data_docs=q.data_docs))
    if not reports:
        raise StageError(f"validate: nothing to validate for {ctx.run_date} under {cfg.lake.root}")
    stored = store_reports(lake, ctx.run_date, reports)

    rows = []
    for rep in reports:
        for r in rep.results:
            status = "ok" if r.success else ("FAILED" if r.severity == "critical" else "warn")
            rows.append([rep.table_name, r.check_name, r.severity, status, r.observed_value[:90]])
    print_table(f"validate: Great Expectations results for {ctx.run_date}", ["table", "expectation", "severity",
                                                                             "result", "observed"], rows)
    critical = [r for rep in reports for r in rep.failed_critical]
    warnings = [r for rep in reports for r in rep.failed_warnings]
    for w in warnings:
        log.warning("validation warning: %s", w.line())
    docs = project.docs_index if q.data_docs else None
    if docs:
        log.info("validate: Data Docs at %s", docs)
    summary = {
        "tables": {rep.table_name: {"rows": rep.rows, "checks": len(rep.results),
                                    "failed_critical": [r.check_name for r in rep.failed_critical],
                                    "warnings": [r.check_name for r in rep.failed_warnings],
                                    "seconds": round(rep.seconds, 2)} for rep in reports},
        "checks": sum(len(rep.results) for rep in reports),
        "failed_critical": len(critical),
        "warnings": len(warnings),
        "ops_validation_rows": stored,
        "data_docs": str(docs) if docs else None,
        "validate_seconds": round(time.perf_counter() - t0, 2),
    }
    if critical:
        raise StageError(f"validation failed for run date {ctx.run_date}: {len(critical)} critical check(s) failed\n"
                         + "\n".join(f"  - {r.line()}" for r in critical)
                         + (f"\n(details in ops.validation and Data Docs {docs})" if docs else ""))
    if warnings and q.fail_on_warning:
        raise StageError(f"validation warnings for run date {ctx.run_date} (quality.fail_on_warning is set)\n"
                         + "\n".join(f"  - {r.line()}" for r in warnings))
    return summary
