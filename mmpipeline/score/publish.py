"""Publishing the ranking as the served search index, safely; and a person's view of it.

``run(ctx)`` (stage ``publish``): read ``gold.search_ranking`` for the run date (pinned to one Delta
version), validate it with Great Expectations (:mod:`mmpipeline.score.checks`, results stored in
``ops.validation``, Data Docs under the lake), and only if every check passes overwrite ``gold.search_index`` -- the feed the
online index loads -- with it in one Delta commit. That commit's version is recorded in the
append-only log ``ops.index_versions`` (action ``publish``). A failed check records ``reject`` and
raises: ``gold.search_index`` is untouched, so the previous version stays current.

``rollback`` makes an earlier published run current again with Delta RESTORE (time travel) of
``gold.search_index`` to the version recorded when that run was published, logged as ``rollback``.
The current run is the one of the latest ``publish`` or ``rollback`` event.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
from typing import Any

import pandas as pd

from mmpipeline.config import Config
from mmpipeline.context import RunContext, StageError

log = logging.getLogger(__name__)

RANKING = "gold.search_ranking"
INDEX = "gold.search_index"
EVENTS = "ops.index_versions"


def _lake(cfg: Config):
    from mmpipeline.lake import Lake

    if cfg.lake.engine == "delta-spark":
        from mmpipeline.spark import get_spark

        return Lake.from_config(cfg, spark=get_spark(cfg))
    return Lake(cfg.lake.root, engine="delta-rs")


def _events(lake) -> pd.DataFrame:
    if not lake.exists(EVENTS):
        return pd.DataFrame(columns=["event_at", "action", "run_date", "status", "index_version", "ranking_version",
                                     "vectors_version", "model_name", "model_version", "queries", "rows", "detail"])
    ev = lake.read_pandas(EVENTS)
    return ev.sort_values(["event_at"], kind="stable").reset_index(drop=True)


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


def run(ctx: RunContext) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from mmpipeline.ops import print_table
    from mmpipeline.score.checks import validate_ranking
    from mmpipeline.validate import store_reports

    cfg = ctx.cfg
    lake = ctx.spark_lake()
    rd = ctx.run_date
    if not lake.exists(RANKING):
        raise StageError(f"{RANKING} does not exist: run the score stage first")
    ranking_version = lake.version(RANKING)
    cur = current_event(lake)
    if (cur is not None and pd.to_datetime(cur["run_date"]).date() == rd and cur["action"] == "publish"
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
        srun = _score_run(lake, rd)
        expected = int(srun["queries"]) if srun is not None and pd.notna(srun.get("queries")) else None
        report = validate_ranking(ranking, rd, cfg.score.min_results_per_query, expected_queries=expected,
                                  model_version=str(srun["model_version"]) if srun is not None else None,
                                  lake_root=cfg.lake.root)
        store_reports(lake, rd, [report])
        print_table(f"publish checks: {RANKING} run {rd} (version {ranking_version}, {n_rows:,} rows)",
                    ["expectation", "column", "ok", "observed"],
                    [[r.check_name, r.column, "yes" if r.success else "NO", r.observed_value[:70]] for r in report.results])
        common = dict(run_date=rd, ranking_version=ranking_version, model_name=model_name,
                      model_version=",".join(versions), queries=n_queries, rows=n_rows)
        if report.failed_critical:
            detail = "; ".join(f"{r.check_name}: {r.observed_value}" for r in report.failed_critical)
            _append_event(lake, action="reject", status="rejected", detail=detail[:4000], **common)
            still = (f"index version {int(cur['index_version'])} (run {pd.to_datetime(cur['run_date']).date()})"
                     if cur else "unpublished")
            raise StageError(f"publish refused for run {rd}: {report.message(include_warnings=False)}\n"
                             f"The served index stays {still}.")
        vectors_version = lake.version("gold.product_vectors")
        index_version = lake.write(INDEX, ranking, mode="overwrite",
                                   metadata={"stage": "publish", "run_date": rd.isoformat(),
                                             "ranking_version": ranking_version})
    finally:
        ranking.unpersist()
    _append_event(lake, action="publish", status="current", index_version=index_version,
                  vectors_version=vectors_version,
                  detail=json.dumps({"checks": len(report.results), "previous_index_version":
                                     None if cur is None else int(cur["index_version"])}), **common)
    log.info("publish: run %s is now the current index (%s version %d; %d queries, %d rows, model %s v%s)",
             rd, INDEX, index_version, n_queries, n_rows, model_name, ",".join(versions))
    return {"published": True, "index_version": index_version, "ranking_version": ranking_version,
            "queries": n_queries, "rows": n_rows, "checks": len(report.results),
            "model": f"{model_name}/{','.join(versions)}", "data_docs": report.data_docs}


# ---------------------------------------------------------------------------------- rollback


def rollback(cfg: Config, run_date: dt.date | None = None, version: int | None = None) -> dict[str, Any]:
    """Make an earlier published run current again (Delta RESTORE of ``gold.search_index``).

    ``version``: an index version recorded by a publish; ``run_date``: the latest publish of that run
    date; neither: the run published before the one currently served.
    """
    lake = _lake(cfg)
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
    new_version = lake.restore(INDEX, to_version)
    restored = lake.count(INDEX)
    if int(t["rows"]) != restored:
        raise StageError(f"restore of {INDEX} to version {to_version} gave {restored} rows, expected {int(t['rows'])}")
    _append_event(lake, action="rollback", status="current", run_date=t["rd"], index_version=new_version,
                  ranking_version=t["ranking_version"], vectors_version=t["vectors_version"],
                  model_name=t["model_name"], model_version=t["model_version"], queries=t["queries"], rows=t["rows"],
                  detail=f"restored index version {to_version}; was run {cur_rd} (index version {int(cur['index_version'])})")
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
    pubs = ev[ev["action"].isin(["publish", "rollback", "reject"])].copy()
    pubs["rd"] = pd.to_datetime(pubs["run_date"]).dt.date
    rows = []
    for _, e in pubs.iloc[::-1].head(20).iterrows():
        is_cur = e["event_at"] == cur["event_at"]
        status = "CURRENT" if is_cur else ("rejected" if e["action"] == "reject" else "previous")
        rows.append([str(e["rd"]), e["action"], status,
                     "" if pd.isna(e["index_version"]) else int(e["index_version"]),
                     f"{e['model_name']} v{e['model_version']}", "" if pd.isna(e["queries"]) else int(e["queries"]),
                     "" if pd.isna(e["rows"]) else int(e["rows"]), f"{pd.Timestamp(e['event_at']):%Y-%m-%d %H:%M:%S}",
                     (e["detail"] or "")[:60] if e["action"] != "publish" else ""])
    print_table("index events (newest first)", ["run date", "action", "status", "index version", "model",
                                                 "queries", "rows", "at (UTC)", "detail"], rows)
    published = (pubs[pubs["action"] == "publish"].drop_duplicates("rd", keep="last")
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
