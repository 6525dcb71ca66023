"""Wall time per task of the latest Airflow runs, read without importing Airflow (scripts/run_nightly.sh).

    python -m mmpipeline.orchestration.timings timings --db var/airflow/airflow.db --logical-date 2026-11-20 \
        mm_catalog_daily mm_ranker_weekly mm_scoring_nightly

prints the wall time of every task of each DAG's run for that logical date, read from the SQLite
metadata database (``task_instance`` joined with ``dag_run``), next to the whole DAG's wall time
(as measured by the caller, which includes Airflow's own start-up) when given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
from pathlib import Path
from typing import Any


def _parse_ts(v: Any) -> dt.datetime | None:
    if v in (None, ""):
        return None
    s = str(v).replace("T", " ")
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S"):
        try:
            return dt.datetime.strptime(s[:26], fmt)
        except ValueError:
            continue
    return None


def task_timings(db: str | Path, dag_ids: list[str], logical_date: str | None = None) -> list[dict[str, Any]]:
    """Rows (dag_id, run_id, task_id, state, try_number, seconds, start, end) of each DAG's latest
    run (for ``logical_date`` when given), in execution order."""
    con = sqlite3.connect(f"file:{Path(db)}?mode=ro", uri=True)
    try:
        out: list[dict[str, Any]] = []
        for dag_id in dag_ids:
            q = "SELECT run_id, state FROM dag_run WHERE dag_id = ?"
            args: list[Any] = [dag_id]
            if logical_date:
                q += " AND substr(logical_date, 1, 10) = ?"
                args.append(logical_date[:10])
            q += " ORDER BY COALESCE(start_date, run_after) DESC LIMIT 1"
            run = con.execute(q, args).fetchone()
            if run is None:
                continue
            rows = con.execute(
                "SELECT task_id, state, try_number, start_date, end_date, duration FROM task_instance "
                "WHERE dag_id = ? AND run_id = ? ORDER BY COALESCE(start_date, '9999'), task_id", (dag_id, run[0]))
            for task_id, state, tries, start, end, duration in rows:
                s, e = _parse_ts(start), _parse_ts(end)
                secs = float(duration) if duration is not None else ((e - s).total_seconds() if s and e else None)
                out.append({"dag_id": dag_id, "run_id": run[0], "run_state": run[1], "task_id": task_id,
                            "state": state, "try_number": tries, "seconds": secs,
                            "start": s.strftime("%H:%M:%S") if s else "", "end": e.strftime("%H:%M:%S") if e else ""})
        return out
    finally:
        con.close()


def print_timings(rows: list[dict[str, Any]], dag_seconds: dict[str, float] | None = None) -> None:
    from mmpipeline.ops import print_table

    dag_seconds = dag_seconds or {}
    table = []
    total_tasks = 0.0
    by_dag: dict[str, float] = {}
    for r in rows:
        table.append([r["dag_id"], r["task_id"], r["state"] or "-", r["start"], r["end"],
                      "" if r["seconds"] is None else f"{r['seconds']:.1f}"])
        if r["seconds"] is not None:
            by_dag[r["dag_id"]] = by_dag.get(r["dag_id"], 0.0) + r["seconds"]
            total_tasks += r["seconds"]
    for dag_id in dict.fromkeys(r["dag_id"] for r in rows):
        wall = dag_seconds.get(dag_id)
        extra = f" (whole `airflow dags test`: {wall:.0f}s)" if wall is not None else ""
        table.append([dag_id, "= all tasks" + extra, "", "", "", f"{by_dag.get(dag_id, 0.0):.1f}"])
    if not table:
        print("no Airflow task runs found")
        return
    print_table("wall time per stage (Airflow task instances, UTC)", ["dag", "task", "state", "start", "end", "seconds"],
                table)
    if dag_seconds:
        wall = sum(dag_seconds.values())
        print(f"tasks {total_tasks:.0f}s of {wall:.0f}s wall; the rest is Airflow start-up and DAG-run bookkeeping")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmpipeline.orchestration.timings")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("timings", help="wall time per task of the latest run of each DAG")
    t.add_argument("dag_ids", nargs="+")
    t.add_argument("--db", required=True, help="Airflow SQLite metadata DB")
    t.add_argument("--logical-date")
    t.add_argument("--dag-seconds", action="append", default=[], metavar="DAG=SECONDS")
    args = p.parse_args(argv)
    if not Path(args.db).is_file():
        print(f"no Airflow metadata DB at {args.db}", file=sys.stderr)
        return 1
    secs = {}
    for item in args.dag_seconds:
        k, _, v = item.partition("=")
        try:
            secs[k] = float(v)
        except ValueError:
            pass
    print_timings(task_timings(args.db, args.dag_ids, args.logical_date), secs)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
