"""The query set scored each night: head queries by frequency plus an optional explicit list.

Frequency of a query = interaction sessions that issued it + max(logged query frequency, judged
pairs). Judgments and the query log count the same searches twice in datasets where both come from
one file (Home Depot), hence the max rather than a sum. Ties break on query id, so the set is
deterministic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from mmpipeline.retrieval.keys import normalize_query, query_id_for  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

QUERY_SET_COLUMNS = ["query_id", "query", "frequency", "source"]


def read_query_list(path: str | Path) -> list[str]:
    """One query per line; blank lines and lines starting with '#' are ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"score.query_list: file not found: {p}")
    return [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _counts(df: pd.DataFrame | None, col: str | None, name: str) -> pd.DataFrame:
    if df is None or not len(df):
        return pd.DataFrame({"query_id": pd.Series(dtype=str), name: pd.Series(dtype="int64"),
                             "query": pd.Series(dtype=str)})
    text = "query_norm" if "query_norm" in df.columns else "query"
    g = df.groupby("query_id", sort=False)
    out = pd.DataFrame({name: (g[col].nunique() if col else g.size()), "query": g[text].first()}).reset_index()
    return out


def build_query_set(head_n: int, queries: pd.DataFrame | None = None, judgments: pd.DataFrame | None = None,
                    interactions: pd.DataFrame | None = None, explicit: list[str] | None = None) -> pd.DataFrame:
    """Top ``head_n`` queries by frequency, plus every query of ``explicit`` (deduplicated by id).

    ``queries``: silver.queries (query_id, query_norm, frequency); ``judgments``: silver.judgments;
    ``interactions``: silver.interactions. Returns (query_id, query, frequency, source) where source
    is ``head``, ``list`` or ``head+list``.
    """
    logged = pd.DataFrame(columns=["query_id", "logged", "query"])
    if queries is not None and len(queries):
        text = "query_norm" if "query_norm" in queries.columns else "query"
        logged = (queries.assign(logged=queries["frequency"].fillna(1).astype("int64"))
                  .groupby("query_id", sort=False).agg(logged=("logged", "sum"), query=(text, "first")).reset_index())
    judged = _counts(judgments, None, "judged")
    sessions = _counts(interactions, "session_id" if interactions is not None and "session_id" in interactions else None,
                       "sessions")
    parts = [d.set_index("query_id") for d in (logged, judged, sessions) if len(d)]
    if parts:
        allq = pd.concat(parts, axis=1, join="outer")
        texts = allq["query"]
        query = texts.bfill(axis=1).iloc[:, 0] if isinstance(texts, pd.DataFrame) else texts
        freq = (allq.get("sessions", pd.Series(0, index=allq.index)).fillna(0)
                + pd.concat([allq.get("logged", pd.Series(0, index=allq.index)).fillna(0),
                             allq.get("judged", pd.Series(0, index=allq.index)).fillna(0)], axis=1).max(axis=1))
        cand = pd.DataFrame({"query_id": allq.index.astype(str), "query": query.values,
                             "frequency": freq.astype("int64").values})
        cand = cand[cand["query"].notna() & (cand["query"].astype(str).str.len() > 0)]
        head = (cand.sort_values(["frequency", "query_id"], ascending=[False, True], kind="stable")
                .head(max(int(head_n), 0)).assign(source="head"))
    else:
        cand = pd.DataFrame(columns=["query_id", "query", "frequency"])
        head = pd.DataFrame(columns=QUERY_SET_COLUMNS)
    if explicit:
        rows = []
        known = dict(zip(cand["query_id"], cand["frequency"]))
        for q in explicit:
            norm = normalize_query(q)
            if norm:
                qid = query_id_for(norm)
                rows.append({"query_id": qid, "query": norm, "frequency": int(known.get(qid, 0)), "source": "list"})
        lst = pd.DataFrame(rows, columns=QUERY_SET_COLUMNS).drop_duplicates("query_id")
        both = set(head["query_id"]) & set(lst["query_id"])
        head.loc[head["query_id"].isin(both), "source"] = "head+list"
        head = pd.concat([head, lst[~lst["query_id"].isin(both)]], ignore_index=True)
    out = head[QUERY_SET_COLUMNS].reset_index(drop=True)
    out["frequency"] = out["frequency"].astype("int64")
    log.info("query set: %d queries (%d head of %d known, %d from the list)", len(out),
             int(out["source"].str.contains("head").sum()), len(cand), int((out["source"] == "list").sum()))
    return out


def add_voice_queries(query_set: pd.DataFrame, transcripts: pd.DataFrame | None,
                      voice_ids: set[str] | None = None) -> pd.DataFrame:
    """The query set plus the recognised voice queries, with a ``modality`` column (text | voice).

    ``transcripts``: gold.voice_transcripts (query_id, query_text, usable); only usable transcripts of
    voice queries still in ``voice_ids`` (silver.voice_queries) are added. A voice query keeps its own
    id (the clip's), so it is ranked and published as its own query even when the same words were typed.
    """
    out = query_set.assign(modality="text")
    if transcripts is None or not len(transcripts):
        return out
    t = transcripts[transcripts["usable"].fillna(False).astype(bool) & transcripts["query_text"].notna()]
    if voice_ids is not None:
        t = t[t["query_id"].isin(voice_ids)]
    t = t[~t["query_id"].isin(set(out["query_id"]))]
    v = pd.DataFrame({"query_id": t["query_id"].astype(str), "query": t["query_text"].astype(str),
                      "frequency": 0, "source": "voice", "modality": "voice"})
    log.info("query set: + %d recognised voice queries", len(v))
    return pd.concat([out, v], ignore_index=True).astype({"frequency": "int64"})
