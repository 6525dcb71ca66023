"""`mmpipeline summary`: tolerant of an empty lake; shows counts and published results when present."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from mmpipeline.schemas import arrow_schema, table
from mmpipeline.summary import print_summary, table_rows, top_results

RD = dt.date(2026, 11, 20)


def _rows(name: str, rows: list[dict]) -> pa.Table:
    spec = table(name)
    full = [{c: r.get(c) for c in spec.column_names} for r in rows]
    return pa.Table.from_pylist(full, schema=arrow_schema(spec))


def test_summary_of_an_empty_lake_reports_what_is_missing(make_config, capsys):
    cfg = make_config()
    out = print_summary(cfg)
    text = capsys.readouterr().out
    assert out == {"tables": [], "champion": None, "results": []}
    assert "no tables yet" in text and "no champion yet" in text and "no published search index yet" in text


def test_summary_counts_tables_and_shows_top_results(make_config, capsys):
    from mmpipeline.lake import Lake

    cfg = make_config()
    lake = Lake(cfg.lake.root, engine="delta-rs")
    lake.write("silver.products", _rows("silver.products", [
        {"product_id": f"p{i}", "title": f"Product {i}", "run_date": RD} for i in range(5)]))
    lake.write("silver.queries", _rows("silver.queries", [
        {"query_id": "q1", "query": "red shirt", "query_norm": "red shirt", "frequency": 9, "run_date": RD},
        {"query_id": "q2", "query": "blue shoe", "query_norm": "blue shoe", "frequency": 3, "run_date": RD}]))
    lake.write("gold.search_index", _rows("gold.search_index", [
        {"run_date": RD, "query_id": q, "query": text, "rank": r + 1, "product_id": f"p{r + k}",
         "score": 1.0 - r / 10, "model_name": "m", "model_version": "2", "candidate_source": "bm25"}
        for k, (q, text) in enumerate([("q1", "red shirt"), ("q2", "blue shoe")]) for r in range(3)]))

    rows = {r["table"]: r for r in table_rows(cfg, RD)}
    assert rows["silver.products"]["rows"] == 5 and rows["silver.products"]["rows_run_date"] == 5
    assert rows["gold.search_index"]["rows"] == 6 and rows["gold.search_index"]["version"] == 0

    res = top_results(cfg, k=2)
    assert [r["query"] for r in res] == ["red shirt", "blue shoe"]  # most frequent first
    assert [x["title"] for x in res[0]["results"]] == ["Product 0", "Product 1"]

    out = print_summary(cfg, run_date="2026-11-20")
    text = capsys.readouterr().out
    assert "silver.products" in text and "published top" in text and "Product 1" in text
    assert out["champion"] is None
