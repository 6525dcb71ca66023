"""``mmpipeline summary``: what the pipeline produced, in one screen.

Three parts, each tolerant of stages that have not run yet (a missing table, model or index is
reported as such, never an error):

1. the lake's tables: Delta version, total rows, rows in the run date's partition, last commit;
2. the champion ranker from the MLflow registry (version, run, metrics) and the latest held-out
   evaluation next to the baselines (``ops.rank_evaluations``), plus the last gating decision;
3. the published search index (``gold.search_index``): the top results for a few head queries.

Reads through delta-rs only (no Spark), so it takes seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from mmpipeline.config import Config

log = logging.getLogger(__name__)

_METRIC_HINTS = ("ndcg", "mrr", "recall", "rmse", "map", "precision", "loss")


def _lake(cfg: Config):
    from mmpipeline.lake import Lake

    return Lake(cfg.lake.root, engine="delta-rs")


def _console():
    from rich.console import Console

    return Console(width=140)


def _fmt_ts(ms_or_ts: Any) -> str:
    try:
        if isinstance(ms_or_ts, (int, float)):
            return dt.datetime.fromtimestamp(ms_or_ts / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return str(ms_or_ts)[:19]
    except Exception:
        return ""


# ------------------------------------------------------------------------------------------ tables
def table_rows(cfg: Config, run_date: dt.date | None = None) -> list[dict[str, Any]]:
    """One dict per registered table that exists in the lake (name, version, rows, rows_run_date, updated)."""
    from mmpipeline.schemas import TABLES

    lake = _lake(cfg)
    out = []
    for name, spec in sorted(TABLES.items()):
        if not lake.exists(name):
            continue
        row: dict[str, Any] = {"table": name, "version": None, "rows": None, "rows_run_date": None, "updated": ""}
        try:  # through the lake layer: the same filtered read (string_view-safe) and commit shape as the stages
            row["version"] = lake.version(name)
            row["rows"] = lake.count(name)
            if run_date is not None and "run_date" in spec.column_names:
                row["rows_run_date"] = lake.count(name, filters=[("run_date", "=", run_date)])
            hist = lake.history(name, 1)
            if hist:
                row["updated"] = _fmt_ts(hist[0].get("timestamp"))
        except Exception as e:  # a broken table is reported, not fatal
            row["updated"] = f"unreadable: {type(e).__name__}"
        out.append(row)
    return out


def _print_tables(cfg: Config, run_date: dt.date | None) -> list[dict[str, Any]]:
    from mmpipeline.ops import print_table

    rows = table_rows(cfg, run_date)
    if not rows:
        _console().print(f"[bold]no tables yet[/bold] under {cfg.lake.root} (run the pipeline first)")
        return rows
    rd = str(run_date) if run_date else "run date"
    print_table(f"lake tables under {cfg.lake.root}", ["table", "version", "rows", f"rows {rd}", "last commit (UTC)"],
                [[r["table"], r["version"], r["rows"], "" if r["rows_run_date"] is None else r["rows_run_date"],
                  r["updated"]] for r in rows])
    return rows


def latest_run_date(cfg: Config) -> dt.date | None:
    """The newest run date any stage recorded in ops.stage_runs (None before the first run)."""
    try:
        lake = _lake(cfg)
        if not lake.exists("ops.stage_runs"):
            return None
        d = lake.read_arrow("ops.stage_runs", columns=["run_date"]).column("run_date").to_pylist()
        d = [x for x in d if x is not None]
        return max(d) if d else None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------- champion
def _mlflow_store_exists(uri: str) -> bool:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    if "://" not in uri:
        return Path(uri).exists()
    return True


def champion_info(cfg: Config, alias: str = "champion") -> dict[str, Any] | None:
    """The registered version behind ``alias`` with its run's metrics (None when there is none)."""
    registry_uri = cfg.mlflow.registry_uri or cfg.mlflow.tracking_uri
    if not _mlflow_store_exists(registry_uri):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri, registry_uri=registry_uri)
    try:
        mv = client.get_model_version_by_alias(cfg.mlflow.model_name, alias)
    except MlflowException:
        return None
    info: dict[str, Any] = {"name": cfg.mlflow.model_name, "version": str(mv.version), "run_id": mv.run_id,
                            "aliases": list(getattr(mv, "aliases", []) or []), "metrics": {}, "params": {},
                            "created": _fmt_ts(mv.creation_timestamp)}
    try:
        run = client.get_run(mv.run_id)
        info["metrics"] = dict(run.data.metrics)
        info["params"] = {k: v for k, v in run.data.params.items()
                          if k in ("fusion", "loss", "epochs", "hidden_dim", "lr", "best_epoch")}
    except MlflowException as e:
        log.warning("champion run %s unreadable: %s", mv.run_id, e)
    return info


def _latest_evaluation(cfg: Config, version: str | None) -> tuple[list[str], list[list[Any]], str]:
    """Systems x metrics (slice 'all') of the latest evaluation run in ops.rank_evaluations."""
    lake = _lake(cfg)
    if not lake.exists("ops.rank_evaluations"):
        return [], [], ""
    ev = lake.read_pandas("ops.rank_evaluations")
    ev = ev[ev["model_name"] == cfg.mlflow.model_name]
    if not len(ev):
        return [], [], ""
    # the latest evaluation of the champion's version (baselines share its evaluated_at), else the latest
    mine = ev[ev["model_version"].astype(str) == str(version)] if version is not None else ev.iloc[0:0]
    latest = (mine if len(mine) else ev)["evaluated_at"].max()
    ev = ev[(ev["evaluated_at"] == latest) & (ev["slice"] == "all")]
    if not len(ev):
        return [], [], ""
    metrics = sorted(ev["metric"].unique())
    rows = []
    for system, grp in ev.groupby("system", sort=False):
        vals = dict(zip(grp["metric"], grp["value"]))
        rows.append([system, *[float(vals[m]) if m in vals else "" for m in metrics]])
    order = {"challenger": 0, "champion": 1}
    rows.sort(key=lambda r: (order.get(r[0], 2), r[0]))
    versions = sorted({str(v) for v in ev["model_version"] if v})
    when = f"model version {', '.join(versions) or '?'}, evaluated {str(latest)[:19]}"
    return metrics, rows, when


def _print_champion(cfg: Config) -> dict[str, Any] | None:
    from mmpipeline.ops import print_table

    console = _console()
    try:
        info = champion_info(cfg)
    except Exception as e:
        console.print(f"[yellow]champion: MLflow registry unreadable ({type(e).__name__}: {e})[/yellow]")
        info = None
    if info is None:
        console.print(f"[bold]no champion yet[/bold]: registered model {cfg.mlflow.model_name!r} has no 'champion' "
                      f"alias in {cfg.mlflow.registry_uri or cfg.mlflow.tracking_uri} (run mm_ranker_weekly)")
    else:
        console.print(f"[bold]champion[/bold]: {info['name']} version {info['version']} (aliases "
                      f"{', '.join(info['aliases']) or '-'}; MLflow run {info['run_id']}; registered {info['created']} UTC)"
                      + (f"; {', '.join(f'{k}={v}' for k, v in sorted(info['params'].items()))}" if info["params"] else ""))
        metrics = {k: v for k, v in info["metrics"].items() if any(h in k.lower() for h in _METRIC_HINTS)}
        metrics = metrics or info["metrics"]
        if metrics:
            print_table("champion's MLflow run metrics", ["metric", "value"],
                        [[k, float(v)] for k, v in sorted(metrics.items())][:30])
    try:
        metrics, rows, when = _latest_evaluation(cfg, info["version"] if info else None)
        if rows:
            print_table(f"held-out evaluation, whole catalog ({when})", ["system", *metrics], rows)
        lake = _lake(cfg)
        if lake.exists("ops.rank_decisions"):
            dec = lake.read_pandas("ops.rank_decisions").sort_values("decided_at")
            if len(dec):
                d = dec.iloc[-1]
                verdict = "PROMOTED" if bool(d["promoted"]) else "not promoted"
                console.print(f"last gating decision ({str(d['decided_at'])[:19]}): challenger v{d['challenger_version']} "
                              f"{verdict} (champion before: v{d['champion_version'] or '-'}); {d['reasons']}")
    except Exception as e:
        console.print(f"[yellow]evaluation records unreadable: {type(e).__name__}: {e}[/yellow]")
    return info


# ------------------------------------------------------------------------------- published results
def sample_queries(cfg: Config, index_queries: list[str], n: int = 3) -> list[str]:
    """A few head queries present in the index: the most frequent ones when frequencies are known."""
    lake = _lake(cfg)
    present = set(index_queries)
    picked: list[str] = []
    try:
        if lake.exists("silver.queries"):
            q = lake.read_pandas("silver.queries", columns=["query_norm", "frequency"]).dropna(subset=["query_norm"])
            q = q.sort_values(["frequency", "query_norm"], ascending=[False, True], na_position="last")
            picked = list(dict.fromkeys(x for x in q["query_norm"].tolist() if x in present))[:n]
    except Exception as e:
        log.debug("query frequencies unavailable: %s", e)
    picked += [x for x in sorted(present) if x not in picked][: n - len(picked)]
    return picked


def top_results(cfg: Config, queries: list[str] | None = None, k: int = 5, n_queries: int = 3) -> list[dict[str, Any]]:
    """Top ``k`` published results for a few queries (from gold.search_index, with titles)."""
    lake = _lake(cfg)
    if not lake.exists("gold.search_index"):
        return []
    idx = lake.read_pandas("gold.search_index")
    if not len(idx):
        return []
    if not queries:
        queries = sample_queries(cfg, sorted(idx["query"].dropna().unique().tolist()), n_queries)
    titles: dict[str, str] = {}
    if lake.exists("silver.products"):
        ids = idx[idx["query"].isin(queries)]["product_id"].unique().tolist()
        if ids:
            p = lake.read_arrow("silver.products", columns=["product_id", "title"],
                                filters=[("product_id", "in", ids)]).to_pandas()
            titles = dict(zip(p["product_id"], p["title"]))
    out = []
    for q in queries:
        hits = idx[idx["query"] == q].sort_values("rank").head(k)
        out.append({"query": q, "results": [
            {"rank": int(r["rank"]), "product_id": r["product_id"], "title": titles.get(r["product_id"], ""),
             "score": float(r["score"]), "model_version": str(r["model_version"]), "run_date": str(r["run_date"])[:10]}
            for _, r in hits.iterrows()]})
    return out


def _print_results(cfg: Config) -> list[dict[str, Any]]:
    from mmpipeline.ops import print_table

    try:
        res = top_results(cfg)
    except Exception as e:
        _console().print(f"[yellow]published index unreadable: {type(e).__name__}: {e}[/yellow]")
        return []
    if not res:
        _console().print("[bold]no published search index yet[/bold] (run mm_scoring_nightly: score, then publish)")
        return res
    for item in res:
        rs = item["results"]
        head = f" (run {rs[0]['run_date']}, model v{rs[0]['model_version']})" if rs else ""
        print_table(f"published top {len(rs)} for {item['query']!r}{head}", ["rank", "product", "title", "score"],
                    [[r["rank"], r["product_id"], r["title"][:90], r["score"]] for r in rs])
    return res


def voice_summary(cfg: Config, n_examples: int = 3) -> dict[str, Any] | None:
    """Voice queries: transcripts, corrections, how many are published, a few examples."""
    lake = _lake(cfg)
    if not lake.exists("gold.voice_transcripts"):
        return None
    t = lake.read_pandas("gold.voice_transcripts", columns=["query_id", "raw_text", "query_text", "correction",
                                                             "usable", "avg_logprob"])
    out: dict[str, Any] = {"transcripts": len(t), "usable": int(t["usable"].fillna(False).sum()),
                           "corrections": t["correction"].value_counts().to_dict()}
    if lake.exists("gold.search_index"):
        idx = lake.read_arrow("gold.search_index", columns=["query_id", "modality"]).to_pandas()
        out["published_voice_queries"] = int(idx.loc[idx["modality"] == "voice", "query_id"].nunique())
    ref = {}
    if lake.exists("silver.voice_queries"):
        sv = lake.read_pandas("silver.voice_queries", columns=["query_id", "query"])
        ref = dict(zip(sv["query_id"], sv["query"]))
    ex = t.sort_values("query_id").head(n_examples)
    out["examples"] = [{"query_id": r.query_id, "said": ref.get(r.query_id), "heard": r.raw_text,
                        "searched": r.query_text, "correction": r.correction} for r in ex.itertuples()]
    return out


def _print_voice(cfg: Config) -> dict[str, Any] | None:
    from mmpipeline.ops import print_table

    try:
        v = voice_summary(cfg)
    except Exception as e:
        _console().print(f"[yellow]voice tables unreadable: {type(e).__name__}: {e}[/yellow]")
        return None
    if v is None:
        return None
    _console().rule("voice queries")
    print_table("voice queries", ["item", "value"], [
        ["transcripts", v["transcripts"]], ["usable as search queries", v["usable"]],
        ["corrections", v["corrections"]], ["published voice queries", v.get("published_voice_queries", "n/a")]])
    print_table("voice examples", ["id", "said", "heard", "searched as", "correction"],
                [[e["query_id"], e["said"], e["heard"], e["searched"], e["correction"]] for e in v["examples"]])
    return v


def print_summary(cfg: Config, run_date: dt.date | str | None = None) -> dict[str, Any]:
    """Print tables with row counts, the champion's metrics and top results for a few queries."""
    if isinstance(run_date, str):
        run_date = dt.date.fromisoformat(run_date)
    rd = run_date or cfg.run_date or latest_run_date(cfg)
    console = _console()
    console.rule(f"mmpipeline summary: {cfg.name} ({cfg.config_path or 'no config file'})")
    tables = _print_tables(cfg, rd)
    console.rule("ranker")
    champ = _print_champion(cfg)
    console.rule("published search index")
    results = _print_results(cfg)
    out = {"tables": tables, "champion": champ, "results": results}
    voice = _print_voice(cfg)
    if voice is not None:
        out["voice"] = voice
    return out
