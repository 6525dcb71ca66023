"""The validate stage end to end on small silver tables: real Spark, real Delta, real Great Expectations."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from mmpipeline.context import RunContext, StageError
from mmpipeline.schemas import table

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def _frame(name: str, rows: list[dict]) -> pd.DataFrame:
    cols = table(name).column_names
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def _products(run_date: dt.date, n: int = 12, dup: bool = False) -> pd.DataFrame:
    rows = []
    for i in range(n):
        has_img = i % 3 != 0
        rows.append({
            "product_id": f"p{i}", "title": f"product {i}", "price": 10.0 + i, "currency": "USD",
            "image_ref": f"{i}.jpg" if has_img else None,
            "image_status": ("ok" if i != 1 else "corrupt") if has_img else "none",  # 7 of 8 decodable
            "popularity": float(i), "rating": 4.0, "updated_at": pd.Timestamp("2024-01-01", tz="UTC"),
            "run_date": run_date, "_batch_id": "b1",
        })
    if dup:
        rows.append({**rows[0], "title": "duplicate of p0"})
    return _frame("silver.products", rows)


def _judgments(run_date: dt.date, bad_grade: bool = False) -> pd.DataFrame:
    rows = [{"query_id": f"q{i % 4}", "query_norm": f"query {i % 4}", "product_id": f"p{i}", "grade": float(i % 4),
             "source": "test", "run_date": run_date} for i in range(12)]
    if bad_grade:
        rows[5]["grade"] = 7.0
    return _frame("silver.judgments", rows)


def _quarantine(run_date: dt.date, n: int) -> pd.DataFrame:
    return _frame("quarantine.products", [{"run_date": run_date, "reason": "missing_id", "detail": "no id",
                                           "record_key": None, "record": "{}", "_source_file": "x.csv",
                                           "_batch_id": "b1"} for _ in range(n)])


def _bronze_rows(run_date: dt.date, n: int) -> pd.DataFrame:
    spec = table("bronze.products")
    return pd.DataFrame([{c: (run_date if c == "run_date" else (i if c == "_row_id" else None))
                          for c in spec.column_names} for i in range(n)], columns=spec.column_names)


def _validation_rows(lake, run_date):
    df = lake.read_pandas("ops.validation", filters=[("run_date", "=", run_date)])
    return df.drop(columns=["validated_at"]).sort_values(["table_name", "check_name"]).reset_index(drop=True)


@pytest.mark.slow
def test_validate_stage_pass_warn_idempotent_then_critical_failure(spark, make_config, capsys):
    from mmpipeline.validate import run

    cfg = make_config({"quality.max_quarantine_share": 0.1})
    ctx = RunContext.create(cfg, D1)
    lake = ctx.spark_lake()
    lake.write("silver.products", _products(D1), mode="overwrite")
    lake.merge("silver.judgments", _judgments(D1))
    lake.write("bronze.products", _bronze_rows(D1, 15), mode="overwrite", partition={"run_date": D1})
    lake.write("quarantine.products", _quarantine(D1, 3), mode="overwrite", partition={"run_date": D1})

    # 1) passing suites; 3 of 15 rows quarantined (20% > 10%) is a warning that does not stop the run
    summary = run(ctx)
    assert summary["failed_critical"] == 0
    assert summary["tables"]["quarantine.products"]["warnings"] == ["quarantine_share"]
    assert summary["tables"]["silver.products"]["rows"] == 12
    assert set(summary["tables"]) == {"silver.products", "silver.judgments", "quarantine.products"}
    out = capsys.readouterr().out
    assert "decodable_image_share" in out and "grade_domain" in out
    first = _validation_rows(lake, D1)
    share = first[first.check_name == "decodable_image_share"].iloc[0]
    assert share.success and "decodable share 0.875 (7 of 8 with an image reference)" in share.observed_value
    q = first[first.check_name == "quarantine_share"].iloc[0]
    assert not q.success and q.severity == "warning" and "3 of 15 rows quarantined (20.00%)" in q.observed_value
    assert "first run" in first[(first.check_name == "row_count") & (first.table_name == "silver.products")].iloc[0].observed_value
    docs = Path(summary["data_docs"])
    assert docs == Path(cfg.lake.root) / "ops" / "data_docs" / "index.html" and docs.is_file()
    _assert_data_docs(docs, first, D1)

    # 2) re-running the run date leaves the same rows in ops.validation (no duplicates); with
    #    quality.fail_on_warning the same warning stops the run
    strict = make_config({"quality.max_quarantine_share": 0.1, "quality.fail_on_warning": True})
    with pytest.raises(StageError, match="quarantine.products: warning check 'quarantine_share'"):
        run(RunContext.create(strict, D1))
    pd.testing.assert_frame_equal(_validation_rows(lake, D1), first)

    # 3) next day: duplicate product ids, a grade of 7 and a shrunken table stop the stage
    lake.write("silver.products", _products(D2, n=4, dup=True), mode="overwrite")
    lake.merge("silver.judgments", _judgments(D2, bad_grade=True))
    with pytest.raises(StageError) as ei:
        run(RunContext.create(cfg, D2))
    msg = str(ei.value)
    assert "silver.products: critical check 'key_unique(product_id)' (expect_column_values_to_be_unique on product_id)" in msg
    assert "'p0' x2" in msg
    assert "silver.judgments: critical check 'grade_domain' (expect_column_values_to_be_between on grade)" in msg
    assert "7.0 x1" in msg
    assert "'row_count'" in msg and "previous run 2024-03-01: 12 rows" in msg  # 5 rows vs 12 (max change 50%)
    # the failed run's results are stored too, next to the first day's
    second = _validation_rows(lake, D2)
    failed = set(second[~second.success].check_name)
    assert {"key_unique(product_id)", "grade_domain", "row_count"} <= failed
    assert len(_validation_rows(lake, D1)) == len(first)
    details = json.loads(second[second.check_name == "grade_domain"].iloc[0].details)
    assert details["kwargs"]["column"] == "grade"


def _page_text(path: Path) -> str:
    """The visible text of a rendered Data Docs page."""
    import html
    import re

    t = path.read_text()
    t = re.sub(r"<(script|style).*?</\1>", " ", t, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)))


def _assert_data_docs(index: Path, rows: pd.DataFrame, run_date: dt.date) -> None:
    """Every validated table has its suite and this run's results rendered, with the counts that
    ops.validation holds, and the index links to them."""
    site = index.parent
    index_html = index.read_text()
    for suite, checks in rows.groupby("suite"):
        *folders, leaf = suite.split(".")  # GE renders "a.b" under a/b
        assert (site / "expectations" / Path(*folders, f"{leaf}.html")).is_file(), suite
        pages = sorted((site / "validations" / Path(*folders, leaf) / str(run_date)).rglob("*.html"))
        assert pages, f"no rendered validation result for {suite} on {run_date}"
        assert any(str(p.relative_to(site)) in index_html for p in pages), f"index does not link {suite}"
        text = _page_text(pages[-1])
        failed = int((~checks["success"].astype(bool)).sum())
        table_name = suite
        assert f"Expectation Suite: {suite}" in text
        assert f"Evaluated Expectations {len(checks)}" in text, (table_name, text[:600])
        assert f"Unsuccessful Expectations {failed}" in text, (table_name, text[:600])
        assert ("Status: Failed" if failed else "Status: Succeeded") in text
