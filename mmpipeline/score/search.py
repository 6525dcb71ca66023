"""The search CLI (``mmpipeline search``): the published top-k for a query, from the served index."""

from __future__ import annotations

import difflib
from typing import Any

import pandas as pd

from mmpipeline.config import Config
from mmpipeline.context import StageError
from mmpipeline.score.index import INDEX, current_event, event_detail, lake_for, reconcile


def search(cfg: Config, query: str, k: int = 10) -> dict[str, Any]:
    """Print the published top ``k`` for ``query`` with titles, scores and the model version."""
    from rich.console import Console
    from rich.table import Table

    from mmpipeline.score.queries import normalize_query, query_id_for

    lake = lake_for(cfg)
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
    dups = _duplicates(lake, rd, str(hits["query_id"].iloc[0]), event_detail(cur).get("duplicates_version"))
    model = f"{hits['model_name'].iloc[0]} v{hits['model_version'].iloc[0]}"
    t = Table(title=f"{query!r}{note}: top {len(hits)} | run {rd} | model {model} | index version "
                    f"{int(cur['index_version'])}", title_justify="left")
    for h, j in (("rank", "right"), ("product", "left"), ("title", "left"), ("score", "right"), ("source", "left"),
                 ("duplicates", "left")):
        t.add_column(h, justify=j)
    out = []
    for _, r in hits.iterrows():
        title = titles.get(r["product_id"], "")
        same = dups.get(str(r["product_id"]), [])
        t.add_row(str(int(r["rank"])), str(r["product_id"]), title[:80], f"{r['score']:.4f}", r["candidate_source"],
                  ",".join(same[:3]) + (f" +{len(same) - 3}" if len(same) > 3 else ""))
        out.append({"rank": int(r["rank"]), "product_id": r["product_id"], "title": title,
                    "score": float(r["score"]), "duplicates": same})
    console.print(t)
    return {"query": query, "model": model, "run_date": str(rd), "results": out}


def _duplicates(lake, run_date, query_id: str, version: int | None = None) -> dict[str, list[str]]:
    """Shown product id -> the product ids the near-duplicate collapse hid behind it (expansion of a
    result): gold.search_duplicates as it was when the served run was published (``version``)."""
    from mmpipeline.score.dedupe import DUPLICATES

    if not lake.exists(DUPLICATES):
        return {}
    d = lake.read_pandas(DUPLICATES, version=None if version is None else int(version),
                         columns=["run_date", "query_id", "product_id", "shown_product_id"],
                         filters=[("query_id", "=", query_id)])
    d = d[pd.to_datetime(d["run_date"]).dt.date == run_date]
    return {k: sorted(map(str, v)) for k, v in d.groupby("shown_product_id")["product_id"]}
