"""Operational records: row accounting, stage runs, and the end-of-stage summary people read."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from mmpipeline.context import RunContext, StageError

log = logging.getLogger(__name__)


@dataclass
class Accounting:
    table_name: str
    rows_in: int
    rows_kept: int
    rows_quarantined: int

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_kept + self.rows_quarantined


def record_accounting(ctx: RunContext, stage: str, rows: list[Accounting],
                      title: str = "in = kept + quarantined") -> None:
    """Store per-table row accounting for the run date, print it, and fail if rows were lost."""
    import pandas as pd

    now = dt.datetime.now(dt.timezone.utc)
    df = pd.DataFrame([{
        "run_date": ctx.run_date, "stage": stage, "table_name": a.table_name, "rows_in": a.rows_in,
        "rows_kept": a.rows_kept, "rows_quarantined": a.rows_quarantined, "balanced": a.balanced,
        "recorded_at": now,
    } for a in rows])
    if len(df):
        ctx.lake.merge("ops.row_accounting", df)
    print_table(f"{stage}: row accounting for {ctx.run_date} ({title})",
                ["table", "in", "kept", "quarantined", "ok"],
                [[a.table_name, a.rows_in, a.rows_kept, a.rows_quarantined, "yes" if a.balanced else "NO"] for a in rows])
    lost = [a for a in rows if not a.balanced]
    if lost:
        raise StageError("rows lost in " + ", ".join(
            f"{a.table_name}: in {a.rows_in} != kept {a.rows_kept} + quarantined {a.rows_quarantined}" for a in lost))


def _ops_lake(ctx: RunContext):
    """The lake for small ops records: the stage's own once it has one; before that one that does not
    pin the context's lake (whose engine ``auto`` picks once Spark runs) and starts no Spark."""
    if "lake" in ctx.__dict__:
        return ctx.lake
    from mmpipeline.lake import Lake

    return Lake.from_config(ctx.cfg, spark=ctx.__dict__.get("spark"))


def record_stage_run(ctx: RunContext, stage: str, status: str, started: dt.datetime, summary: dict[str, Any]) -> None:
    import pandas as pd

    finished = dt.datetime.now(dt.timezone.utc)
    try:
        _ops_lake(ctx).merge("ops.stage_runs", pd.DataFrame([{
            "run_date": ctx.run_date, "stage": stage, "status": status, "started_at": started,
            "finished_at": finished, "seconds": (finished - started).total_seconds(),
            "summary": json.dumps(summary, default=str)[:20000],
        }]))
    except Exception as e:  # recording must never mask the stage's own outcome
        log.warning("could not record stage run: %s", e)


def recover_abandoned(ctx: RunContext, stage: str, stale_lock: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Record earlier runs of ``stage`` that never finished (killed, machine lost) as ``killed``.

    Called by the run that now holds the stage's lock: any ``running`` row of the stage in
    ``ops.stage_runs`` therefore belongs to a dead run (and so does a stale lock it took over).
    Returns what was recorded.
    """
    import pandas as pd

    try:
        lake = _ops_lake(ctx)
    except Exception as e:  # recording must not stop the run (e.g. engine delta-spark before Spark)
        log.warning("could not check ops.stage_runs for killed runs: %s", e)
        return []
    found: dict[str, dict[str, Any]] = {}
    if lake.exists("ops.stage_runs"):
        t = lake.read_pandas("ops.stage_runs", filters=[("stage", "=", stage), ("status", "=", "running")])
        for r in t.to_dict("records"):
            found[str(r["run_date"])] = {"run_date": r["run_date"], "started_at": r["started_at"],
                                         "summary": r["summary"]}
    if stale_lock and stale_lock.get("run_date") and stale_lock["run_date"] not in found:
        try:
            found[stale_lock["run_date"]] = {
                "run_date": dt.date.fromisoformat(stale_lock["run_date"]),
                "started_at": pd.Timestamp(stale_lock.get("started_at") or dt.datetime.now(dt.timezone.utc)),
                "summary": json.dumps({"lock": stale_lock})}
        except ValueError:
            pass
    if not found:
        return []
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for rd, r in sorted(found.items()):
        try:
            before = json.loads(r["summary"] or "{}")
        except ValueError:
            before = {}
        rows.append({"run_date": r["run_date"], "stage": stage, "status": "killed", "started_at": r["started_at"],
                     "finished_at": now, "seconds": None,
                     "summary": json.dumps({"killed": True, "detected_at": now.isoformat(timespec="seconds"),
                                            "detected_by_pid": os.getpid(), **before}, default=str)[:20000]})
        log.warning("stage %s: the run for %s started %s never finished (killed?); recorded as killed in "
                    "ops.stage_runs", stage, rd, r["started_at"])
    lake.merge("ops.stage_runs", pd.DataFrame(rows))
    return rows


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    """A readable table on stdout (rich when the terminal allows, plain text otherwise)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for h in headers:
        t.add_column(h, justify="right" if h not in ("table", "query", "title", "stage", "expectation", "table_name", "observed") else "left")
    for r in rows:
        t.add_row(*[f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else
                    (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r])
    Console(width=140).print(t)
