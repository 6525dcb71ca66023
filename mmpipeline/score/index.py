"""The lake I/O of the served search index: its event log, reconcile, rollback and status.

``gold.search_index`` is the feed the online index loads; ``ops.index_versions`` logs every change
of it. Every change is a recoverable, self-healing sequence --

1. append a ``pending`` event naming an operation id and the index version it starts from;
2. commit ``gold.search_index`` (a publish carries the operation id in its commit metadata; a
   rollback is a Delta RESTORE read from that version);
3. append the ``current`` event with the new index version.

A process killed between 1 and 3 leaves a pending event. :func:`reconcile`, run at the start of every
publish / rollback / index-status / search, derives the truth from the index table's own commit log:
when its latest commit is one a pending operation made, that operation is completed (``current``);
pending operations that never committed are marked ``aborted``.

:func:`rollback` makes an earlier published run current again with Delta RESTORE (time travel) of
``gold.search_index`` to the version recorded when that run was published, logged as ``rollback``.
The current run is the one of the latest ``publish`` or ``rollback`` event with status ``current``
(:func:`current_of`, pure); which run a rollback restores is :func:`rollback_target` (pure).
The publish stage is :mod:`mmpipeline.score.publish`; the search CLI is :mod:`mmpipeline.score.search`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Any

import pandas as pd

from mmpipeline.config import Config
from mmpipeline.context import StageError

log = logging.getLogger(__name__)

INDEX = "gold.search_index"
EVENTS = "ops.index_versions"
EVENT_COLUMNS = ["event_at", "action", "run_date", "status", "index_version", "ranking_version",
                 "vectors_version", "model_name", "model_version", "queries", "rows", "detail"]


def lake_for(cfg: Config):
    """The lake of ``cfg`` for the index commands run outside a stage (rollback, status, search)."""
    from mmpipeline.lake import Lake

    if cfg.lake.engine == "delta-spark":
        from mmpipeline.spark import get_spark

        return Lake.from_config(cfg, spark=get_spark(cfg))
    return Lake(cfg.lake.root, engine="delta-rs")


def events(lake) -> pd.DataFrame:
    """``ops.index_versions`` in event order (an empty frame when nothing was logged)."""
    if not lake.exists(EVENTS):
        return pd.DataFrame(columns=EVENT_COLUMNS)
    ev = lake.read_pandas(EVENTS)
    return ev.sort_values(["event_at"], kind="stable").reset_index(drop=True)


def event_detail(e: Any) -> dict[str, Any]:
    """The JSON detail of an event (older events may hold plain text)."""
    raw = e.get("detail") if isinstance(e, dict) else e
    if not isinstance(raw, str) or not raw.strip().startswith("{"):
        return {"note": raw} if isinstance(raw, str) and raw else {}
    try:
        d = json.loads(raw)
    except ValueError:
        return {"note": raw}
    return d if isinstance(d, dict) else {"note": raw}


def current_of(ev: pd.DataFrame) -> dict[str, Any] | None:
    """The event that made the served index what it is -- the latest ``current`` publish or rollback
    of the (event-ordered) log ``ev`` -- or None."""
    cur = ev[ev["action"].isin(["publish", "rollback"]) & (ev["status"] == "current")]
    return None if not len(cur) else cur.iloc[-1].to_dict()


def current_event(lake) -> dict[str, Any] | None:
    """The event that made the served index what it is (latest publish or rollback), or None."""
    return current_of(events(lake))


def append_event(lake, **row: Any) -> None:
    base = {"event_at": dt.datetime.now(dt.timezone.utc), "index_version": None, "ranking_version": None,
            "vectors_version": None, "model_name": None, "model_version": None, "queries": None, "rows": None,
            "detail": None}
    base.update(row)
    if isinstance(base["detail"], dict):
        base["detail"] = json.dumps(base["detail"], default=str)
    df = pd.DataFrame([base])
    for c in ("index_version", "ranking_version", "vectors_version", "queries", "rows"):
        df[c] = df[c].astype("Int64")
    lake.write(EVENTS, df, mode="append")


# ----------------------------------------------------------------------------------- reconcile


def reconcile(lake) -> dict[str, Any] | None:
    """Bring ``ops.index_versions`` in line with ``gold.search_index``'s own commit log.

    Completes the pending operation whose commit is the index's latest version (a publish or a
    rollback killed before it logged ``current``) and marks pending operations that never committed
    ``aborted``. Returns what it completed, or None. Safe to call at any time, idempotent.
    """
    ev = events(lake)
    if not len(ev):
        return None
    details = [event_detail(e) for e in ev["detail"]]
    ev = ev.assign(op_id=[d.get("op_id") for d in details])
    pending = ev[ev["status"] == "pending"]
    if not len(pending):
        return None
    resolved = set(ev.loc[ev["status"].isin(["current", "aborted"]), "op_id"].dropna())
    completed = None
    if lake.exists(INDEX):
        latest = lake.version(INDEX)
        cur = current_event(lake)
        if cur is None or pd.isna(cur.get("index_version")) or int(cur["index_version"]) != latest:
            entry = next((h for h in lake.history(INDEX, limit=1)), None)
            meta = {**(entry or {}), **((entry or {}).get("metadata") or {})}  # commit info + custom metadata
            match = None
            for i in range(len(pending) - 1, -1, -1):
                p = pending.iloc[i]
                d = event_detail(p["detail"])
                if p["action"] == "publish" and meta.get("publish_op_id") == d.get("op_id"):
                    match = p
                elif (p["action"] == "rollback" and str(meta.get("operation", "")).upper() == "RESTORE"
                      and d.get("base_version") is not None and int(meta.get("readVersion", -2)) == int(d["base_version"])):
                    match = p
                if match is not None:
                    break
            if match is not None:
                d = event_detail(match["detail"])
                row = {c: match[c] for c in EVENT_COLUMNS if c not in ("event_at", "status", "index_version", "detail")}
                row = {k: (None if (not isinstance(v, str) and pd.isna(v)) else v) for k, v in row.items()}
                d.update({"reconciled": True, "note": f"completed by reconcile: {INDEX} version {latest} was "
                                                      f"committed by this {match['action']} before it was interrupted"})
                append_event(lake, status="current", index_version=latest, detail=d, **row)
                resolved.add(d.get("op_id"))
                completed = {"action": match["action"], "run_date": str(pd.to_datetime(match["run_date"]).date()),
                             "index_version": latest, "op_id": d.get("op_id")}
                log.warning("reconcile: %s of run %s was interrupted after it committed %s version %d; "
                            "it is now recorded as current", match["action"], completed["run_date"], INDEX, latest)
            elif cur is not None:
                log.error("reconcile: %s is at version %d but the log names version %s, and no pending operation "
                          "made that commit; was the table written outside 'mmpipeline run publish'?", INDEX,
                          latest, cur.get("index_version"))
    for _, p in pending.iterrows():
        d = event_detail(p["detail"])
        if d.get("op_id") in resolved:
            continue
        d["note"] = "aborted: the process stopped before it committed the index"
        row = {c: p[c] for c in ("action", "run_date", "ranking_version", "model_name", "model_version")}
        row = {k: (None if (not isinstance(v, str) and pd.isna(v)) else v) for k, v in row.items()}
        append_event(lake, status="aborted", detail=d, **row)
        resolved.add(d.get("op_id"))
        log.warning("reconcile: %s of run %s (op %s) never committed; marked aborted", p["action"],
                    pd.to_datetime(p["run_date"]).date(), d.get("op_id"))
    return completed


# ---------------------------------------------------------------------------------- rollback


def rollback_target(ev: pd.DataFrame, cur: dict[str, Any] | None, run_date: dt.date | None = None,
                    version: int | None = None) -> pd.Series:
    """The ``current`` publish event a rollback restores (pure: the event log ``ev`` and its current
    event ``cur`` in). ``version``: an index version recorded by a publish; ``run_date``: the latest
    publish of that run date; neither: the run published before the one currently served. The
    event carries ``rd``, its run date. Raises StageError when there is no such publish."""
    pubs = ev[(ev["action"] == "publish") & (ev["status"] == "current")].reset_index(drop=True)
    if cur is None or not len(pubs):
        raise StageError("nothing has been published yet: there is no earlier run to roll back to")
    pubs["rd"] = pd.to_datetime(pubs["run_date"]).dt.date
    cur_rd = pd.to_datetime(cur["run_date"]).date()
    if version is not None:
        target = pubs[pubs["index_version"] == version]
        if not len(target):
            raise StageError(f"index version {version} was never published; published versions: "
                             f"{sorted(int(v) for v in pubs['index_version'])}")
    elif run_date is not None:
        target = pubs[pubs["rd"] == run_date]
        if not len(target):
            raise StageError(f"run {run_date} was never published; published runs: {sorted(set(map(str, pubs['rd'])))}")
    else:
        # the run published before the one being served
        cur_pub = pubs[pubs["rd"] == cur_rd]
        before = pubs.iloc[: cur_pub.index[-1]] if len(cur_pub) else pubs
        target = before[before["rd"] != cur_rd]
        if not len(target):
            raise StageError(f"no published run before the current one ({cur_rd})")
    return target.iloc[-1]


def rollback(cfg: Config, run_date: dt.date | None = None, version: int | None = None) -> dict[str, Any]:
    """Make an earlier published run current again (Delta RESTORE of ``gold.search_index``).

    ``version``: an index version recorded by a publish; ``run_date``: the latest publish of that run
    date; neither: the run published before the one currently served.
    """
    lake = lake_for(cfg)
    reconcile(lake)
    ev = events(lake)
    cur = current_of(ev)
    t = rollback_target(ev, cur, run_date, version)
    cur_rd = pd.to_datetime(cur["run_date"]).date()
    to_version = int(t["index_version"])
    op_id = uuid.uuid4().hex
    base_version = lake.version(INDEX)
    common = dict(action="rollback", run_date=t["rd"], ranking_version=t["ranking_version"],
                  vectors_version=t["vectors_version"], model_name=t["model_name"], model_version=t["model_version"],
                  queries=t["queries"], rows=t["rows"])
    note = f"restored index version {to_version}; was run {cur_rd} (index version {int(cur['index_version'])})"
    detail = {"op_id": op_id, "base_version": base_version, "restore_to": to_version,
              "fingerprint": event_detail(t["detail"]).get("fingerprint"), "note": note,
              "duplicates_version": event_detail(t["detail"]).get("duplicates_version")}
    append_event(lake, status="pending", detail=detail, **common)
    new_version = lake.restore(INDEX, to_version)
    restored = lake.count(INDEX)
    if int(t["rows"]) != restored:
        raise StageError(f"restore of {INDEX} to version {to_version} gave {restored} rows, expected {int(t['rows'])}")
    append_event(lake, status="current", index_version=new_version, detail=detail, **common)
    print(f"rolled back: run {t['rd']} is current again ({INDEX} restored to version {to_version} "
          f"as new version {new_version}; was run {cur_rd})")
    return {"run_date": str(t["rd"]), "restored_version": to_version, "index_version": new_version,
            "previous_run_date": str(cur_rd)}


# ------------------------------------------------------------------------------ person's view


def index_status(cfg: Config) -> dict[str, Any]:
    """Print the current and previous published runs (and recent rejected attempts)."""
    from rich.console import Console

    from mmpipeline.ops import print_table

    lake = lake_for(cfg)
    reconcile(lake)
    ev = events(lake)
    cur = current_event(lake)
    console = Console(width=140)
    if cur is None:
        console.print(f"[bold]no published index yet[/bold] under {cfg.lake.root} "
                      "(run: mmpipeline run score, then mmpipeline run publish)")
        return {"current": None, "published": []}
    cur_rd = pd.to_datetime(cur["run_date"]).date()
    console.print(f"[bold]current index:[/bold] run {cur_rd}, {INDEX} version {int(cur['index_version'])} "
                  f"(by {cur['action']} at {pd.Timestamp(cur['event_at']):%Y-%m-%d %H:%M:%S} UTC), "
                  f"model {cur['model_name']} v{cur['model_version']}, {int(cur['queries'])} queries, {int(cur['rows'])} rows")
    pubs = ev[ev["action"].isin(["publish", "rollback", "reject"]) & (ev["status"] != "pending")].copy()
    pubs["rd"] = pd.to_datetime(pubs["run_date"]).dt.date
    rows = []
    for _, e in pubs.iloc[::-1].head(20).iterrows():
        is_cur = e["event_at"] == cur["event_at"]
        status = ("CURRENT" if is_cur else "rejected" if e["action"] == "reject"
                  else "aborted" if e["status"] == "aborted" else "previous")
        rows.append([str(e["rd"]), e["action"], status,
                     "" if pd.isna(e["index_version"]) else int(e["index_version"]),
                     f"{e['model_name']} v{e['model_version']}", "" if pd.isna(e["queries"]) else int(e["queries"]),
                     "" if pd.isna(e["rows"]) else int(e["rows"]), f"{pd.Timestamp(e['event_at']):%Y-%m-%d %H:%M:%S}",
                     str(event_detail(e["detail"]).get("note") or "")[:60] if e["action"] != "publish" or e["status"] != "current" else ""])
    print_table("index events (newest first)", ["run date", "action", "status", "index version", "model",
                                                 "queries", "rows", "at (UTC)", "detail"], rows)
    published = (pubs[(pubs["action"] == "publish") & (pubs["status"] == "current")].drop_duplicates("rd", keep="last")
                 .sort_values("event_at", ascending=False))
    return {"current": {"run_date": str(cur_rd), "index_version": int(cur["index_version"]),
                        "model_version": cur["model_version"]},
            "published": [{"run_date": str(r["rd"]), "index_version": int(r["index_version"])}
                          for _, r in published.iterrows()]}
