"""Publishing the ranking as the served search index, safely; and a person's view of it.

``run(ctx)`` (stage ``publish``): read ``gold.search_ranking`` for the run date (pinned to one Delta
version), validate it with Great Expectations (:mod:`mmpipeline.score.checks`: coverage of the run's
own query set, product ids in the catalog of that date, score sanity, the expected model version;
results stored in ``ops.validation``, Data Docs under the lake), and only if every check passes
overwrite ``gold.search_index`` -- the feed the online index loads -- with it in one Delta commit.
A failed check records ``reject`` and raises: ``gold.search_index`` is untouched, so the previous
version stays current. A run date older than the one served is refused unless forced
(``--param force=true``); publishing a ranking identical to the served one is a no-op.

The served table and the log ``ops.index_versions`` cannot disagree for long: every change of the
index is a recoverable, self-healing sequence --

1. append a ``pending`` event naming an operation id and the index version it starts from;
2. commit ``gold.search_index`` (a publish carries the operation id in its commit metadata; a
   rollback is a Delta RESTORE read from that version);
3. append the ``current`` event with the new index version.

A process killed between 1 and 3 leaves a pending event. :func:`reconcile`, run at the start of every
publish / rollback / index-status / search, derives the truth from the index table's own commit log:
when its latest commit is one a pending operation made, that operation is completed (``current``);
pending operations that never committed are marked ``aborted``.

``rollback`` makes an earlier published run current again with Delta RESTORE (time travel) of
``gold.search_index`` to the version recorded when that run was published, logged as ``rollback``.
The current run is the one of the latest ``publish`` or ``rollback`` event with status ``current``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import uuid
from typing import Any

import pandas as pd

from mmpipeline.config import Config
from mmpipeline.context import RunContext, StageError

log = logging.getLogger(__name__)

RANKING = "gold.search_ranking"
INDEX = "gold.search_index"
EVENTS = "ops.index_versions"
EVENT_COLUMNS = ["event_at", "action", "run_date", "status", "index_version", "ranking_version",
                 "vectors_version", "model_name", "model_version", "queries", "rows", "detail"]


def _lake(cfg: Config):
    from mmpipeline.lake import Lake

    if cfg.lake.engine == "delta-spark":
        from mmpipeline.spark import get_spark

        return Lake.from_config(cfg, spark=get_spark(cfg))
    return Lake(cfg.lake.root, engine="delta-rs")


def _events(lake) -> pd.DataFrame:
    if not lake.exists(EVENTS):
        return pd.DataFrame(columns=EVENT_COLUMNS)
    ev = lake.read_pandas(EVENTS)
    return ev.sort_values(["event_at"], kind="stable").reset_index(drop=True)


def _detail(e: Any) -> dict[str, Any]:
    """The JSON detail of an event (older events may hold plain text)."""
    raw = e.get("detail") if isinstance(e, dict) else e
    if not isinstance(raw, str) or not raw.strip().startswith("{"):
        return {"note": raw} if isinstance(raw, str) and raw else {}
    try:
        d = json.loads(raw)
    except ValueError:
        return {"note": raw}
    return d if isinstance(d, dict) else {"note": raw}


def current_event(lake) -> dict[str, Any] | None:
    """The event that made the served index what it is (latest publish or rollback), or None."""
    ev = _events(lake)
    cur = ev[ev["action"].isin(["publish", "rollback"]) & (ev["status"] == "current")]
    return None if not len(cur) else cur.iloc[-1].to_dict()


def _append_event(lake, **row: Any) -> None:
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


# ----------------------------------------------------------------------------------- reconcile


def reconcile(lake) -> dict[str, Any] | None:
    """Bring ``ops.index_versions`` in line with ``gold.search_index``'s own commit log.

    Completes the pending operation whose commit is the index's latest version (a publish or a
    rollback killed before it logged ``current``) and marks pending operations that never committed
    ``aborted``. Returns what it completed, or None. Safe to call at any time, idempotent.
    """
    from mmpipeline.score.checks import commit_meta

    ev = _events(lake)
    if not len(ev):
        return None
    details = [_detail(e) for e in ev["detail"]]
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
            meta = commit_meta(entry or {})
            match = None
            for i in range(len(pending) - 1, -1, -1):
                p = pending.iloc[i]
                d = _detail(p["detail"])
                if p["action"] == "publish" and meta.get("publish_op_id") == d.get("op_id"):
                    match = p
                elif (p["action"] == "rollback" and str(meta.get("operation", "")).upper() == "RESTORE"
                      and d.get("base_version") is not None and int(meta.get("readVersion", -2)) == int(d["base_version"])):
                    match = p
                if match is not None:
                    break
            if match is not None:
                d = _detail(match["detail"])
                row = {c: match[c] for c in EVENT_COLUMNS if c not in ("event_at", "status", "index_version", "detail")}
                row = {k: (None if (not isinstance(v, str) and pd.isna(v)) else v) for k, v in row.items()}
                d.update({"reconciled": True, "note": f"completed by reconcile: {INDEX} version {latest} was "
                                                      f"committed by this {match['action']} before it was interrupted"})
                _append_event(lake, status="current", index_version=latest, detail=d, **row)
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
        d = _detail(p["detail"])
        if d.get("op_id") in resolved:
            continue
        d["note"] = "aborted: the process stopped before it committed the index"
        row = {c: p[c] for c in ("action", "run_date", "ranking_version", "model_name", "model_version")}
        row = {k: (None if (not isinstance(v, str) and pd.isna(v)) else v) for k, v in row.items()}
        _append_event(lake, status="aborted", detail=d, **row)
        resolved.add(d.get("op_id"))
        log.warning("reconcile: %s of run %s (op %s) never committed; marked aborted", p["action"],
                    pd.to_datetime(p["run_date"]).date(), d.get("op_id"))
    return completed


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
    cur = current_event(lake)
    cur_rd = None if cur is None else pd.to_datetime(cur["run_date"]).date()
    if cur is not None and rd < cur_rd and not force:
        raise StageError(f"publish refused: run {rd} is older than the served index (run {cur_rd}, {INDEX} version "
                         f"{int(cur['index_version'])}); pass --param force=true to publish it anyway, or "
                         f"'mmpipeline rollback --to-run-date {rd}' to serve an earlier published run again")
    cur_detail = _detail(cur) if cur is not None else {}
    if (cur is not None and cur_rd == rd and cur["action"] == "publish"
            and pd.notna(cur.get("ranking_version")) and int(cur["ranking_version"]) == ranking_version):
        log.info("publish: run %s (ranking version %d) is already the current index version %s; nothing to do",
                 rd, ranking_version, cur["index_version"])
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
        if (cur is not None and cur_rd == rd and cur["action"] == "publish"
                and cur_detail.get("fingerprint") == fingerprint):
            log.info("publish: run %s is already the current index (version %s) with identical rows; nothing to do",
                     rd, cur["index_version"])
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
            _append_event(lake, action="reject", status="rejected", detail={"note": detail[:4000]}, **common)
            still = (f"index version {int(cur['index_version'])} (run {cur_rd})" if cur else "unpublished")
            raise StageError(f"publish refused for run {rd}: {report.message(include_warnings=False)}\n"
                             f"The served index stays {still}.")
        vectors_version = lake.version("gold.product_vectors")
        op_id = uuid.uuid4().hex
        base_version = lake.version(INDEX)
        detail = {"op_id": op_id, "base_version": base_version, "checks": len(report.results),
                  "fingerprint": fingerprint, "forced": bool(force and cur is not None and rd < cur_rd),
                  "catalog_version": inputs.catalog_version, "query_set": len(inputs.query_set),
                  "previous_index_version": None if cur is None else int(cur["index_version"])}
        _append_event(lake, action="publish", status="pending", vectors_version=vectors_version, detail=detail,
                      **common)
        index_version = lake.write(INDEX, ranking, mode="overwrite",
                                   metadata={"stage": "publish", "run_date": rd.isoformat(),
                                             "ranking_version": ranking_version, "publish_op_id": op_id})
    finally:
        ranking.unpersist()
    _append_event(lake, action="publish", status="current", index_version=index_version,
                  vectors_version=vectors_version, detail=detail, **common)
    log.info("publish: run %s is now the current index (%s version %d; %d queries, %d rows, model %s v%s)",
             rd, INDEX, index_version, n_queries, n_rows, model_name, ",".join(versions))
    return {"published": True, "index_version": index_version, "ranking_version": ranking_version,
            "queries": n_queries, "rows": n_rows, "checks": len(report.results), "forced": detail["forced"],
            "model": f"{model_name}/{','.join(versions)}", "data_docs": report.data_docs}


# ---------------------------------------------------------------------------------- rollback


def rollback(cfg: Config, run_date: dt.date | None = None, version: int | None = None) -> dict[str, Any]:
    """Make an earlier published run current again (Delta RESTORE of ``gold.search_index``).

    ``version``: an index version recorded by a publish; ``run_date``: the latest publish of that run
    date; neither: the run published before the one currently served.
    """
    lake = _lake(cfg)
    reconcile(lake)
    ev = _events(lake)
    pubs = ev[(ev["action"] == "publish") & (ev["status"] == "current")].reset_index(drop=True)
    cur = current_event(lake)
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
    t = target.iloc[-1]
    to_version = int(t["index_version"])
    op_id = uuid.uuid4().hex
    base_version = lake.version(INDEX)
    common = dict(action="rollback", run_date=t["rd"], ranking_version=t["ranking_version"],
                  vectors_version=t["vectors_version"], model_name=t["model_name"], model_version=t["model_version"],
                  queries=t["queries"], rows=t["rows"])
    note = f"restored index version {to_version}; was run {cur_rd} (index version {int(cur['index_version'])})"
    detail = {"op_id": op_id, "base_version": base_version, "restore_to": to_version,
              "fingerprint": _detail(t["detail"]).get("fingerprint"), "note": note}
    _append_event(lake, status="pending", detail=detail, **common)
    new_version = lake.restore(INDEX, to_version)
    restored = lake.count(INDEX)
    if int(t["rows"]) != restored:
        raise StageError(f"restore of {INDEX} to version {to_version} gave {restored} rows, expected {int(t['rows'])}")
    _append_event(lake, status="current", index_version=new_version, detail=detail, **common)
    print(f"rolled back: run {t['rd']} is current again ({INDEX} restored to version {to_version} "
          f"as new version {new_version}; was run {cur_rd})")
    return {"run_date": str(t["rd"]), "restored_version": to_version, "index_version": new_version,
            "previous_run_date": str(cur_rd)}


# ------------------------------------------------------------------------------ person's view


def index_status(cfg: Config) -> dict[str, Any]:
    """Print the current and previous published runs (and recent rejected attempts)."""
    from rich.console import Console

    from mmpipeline.ops import print_table

    lake = _lake(cfg)
    reconcile(lake)
    ev = _events(lake)
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
                     str(_detail(e["detail"]).get("note") or "")[:60] if e["action"] != "publish" or e["status"] != "current" else ""])
    print_table("index events (newest first)", ["run date", "action", "status", "index version", "model",
                                                 "queries", "rows", "at (UTC)", "detail"], rows)
    published = (pubs[(pubs["action"] == "publish") & (pubs["status"] == "current")].drop_duplicates("rd", keep="last")
                 .sort_values("event_at", ascending=False))
    return {"current": {"run_date": str(cur_rd), "index_version": int(cur["index_version"]),
                        "model_version": cur["model_version"]},
            "published": [{"run_date": str(r["rd"]), "index_version": int(r["index_version"])}
                          for _, r in published.iterrows()]}


def search(cfg: Config, query: str, k: int = 10) -> dict[str, Any]:
    """Print the published top ``k`` for ``query`` with titles, scores and the model version."""
    from rich.console import Console
    from rich.table import Table

    from mmpipeline.score.queries import normalize_query, query_id_for

    lake = _lake(cfg)
    reconcile(lake)
    console = Console(width=140)
    cur = current_event(lake)
    if cur is None or not lake.exists(INDEX):
        raise StageError("no published search index yet: run the score and publish stages first")
    norm = normalize_query(query)
    qid = query_id_for(norm)
    hits = lake.read_pandas(INDEX, filters=[("query_id", "=", qid)])
    note = ""
    if not len(hits):
        known = lake.read_arrow(INDEX, columns=["query_id", "query"]).to_pandas().drop_duplicates("query_id")
        exact = known[known["query"].str.lower() == norm]
        if len(exact):
            match_id, match_q = exact.iloc[0]["query_id"], exact.iloc[0]["query"]
        else:
            close = difflib.get_close_matches(norm, list(known["query"]), n=1, cutoff=0.8)
            if not close:
                console.print(f"no published ranking for [bold]{query!r}[/bold] (the index holds "
                              f"{len(known):,} queries; it is built for head queries and score.query_list)")
                return {"query": query, "results": []}
            match_q = close[0]
            match_id = known[known["query"] == match_q].iloc[0]["query_id"]
        note = f" (closest published query: {match_q!r})"
        hits = lake.read_pandas(INDEX, filters=[("query_id", "=", match_id)])
    hits = hits.sort_values("rank").head(k)
    titles: dict[str, str] = {}
    if lake.exists("silver.products"):
        ids = list(hits["product_id"])
        prods = lake.read_arrow("silver.products", columns=["product_id", "title"],
                                filters=[("product_id", "in", ids)]).to_pandas()
        titles = dict(zip(prods["product_id"], prods["title"]))
    rd = pd.to_datetime(hits["run_date"].iloc[0]).date()
    model = f"{hits['model_name'].iloc[0]} v{hits['model_version'].iloc[0]}"
    t = Table(title=f"{query!r}{note}: top {len(hits)} | run {rd} | model {model} | index version "
                    f"{int(cur['index_version'])}", title_justify="left")
    for h, j in (("rank", "right"), ("product", "left"), ("title", "left"), ("score", "right"), ("source", "left")):
        t.add_column(h, justify=j)
    out = []
    for _, r in hits.iterrows():
        title = titles.get(r["product_id"], "")
        t.add_row(str(int(r["rank"])), str(r["product_id"]), title[:80], f"{r['score']:.4f}", r["candidate_source"])
        out.append({"rank": int(r["rank"]), "product_id": r["product_id"], "title": title,
                    "score": float(r["score"])})
    console.print(t)
    return {"query": query, "model": model, "run_date": str(rd), "results": out}
