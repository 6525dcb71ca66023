"""Generic validation API on real Spark + real Great Expectations (ephemeral GX context)."""

from __future__ import annotations

import datetime as dt

import pytest

from mmpipeline.validate import Check, ValidationReport, format_observed
from mmpipeline.validate import CheckResult


def test_check_severity_is_validated():
    with pytest.raises(ValueError, match="severity"):
        Check({"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}}, "fatal")


def test_format_observed_and_message():
    obs = format_observed("expect_column_values_to_be_unique", {
        "element_count": 4, "unexpected_count": 2, "unexpected_percent": 50.0,
        "partial_unexpected_counts": [{"value": "p1", "count": 2}]})
    assert obs == "2 of 4 rows unexpected (50.00%), e.g. 'p1' x2"
    rep = ValidationReport("silver.products", "silver.products", [
        CheckResult("silver.products", "silver.products", "key_unique(product_id)", "expect_column_values_to_be_unique",
                    "product_id", "critical", False, obs),
        CheckResult("silver.products", "silver.products", "popularity_non_negative", "expect_column_values_to_be_between",
                    "popularity", "warning", False, "1 of 4 rows unexpected"),
    ], run_date=dt.date(2024, 1, 2))
    assert [r.check_name for r in rep.failed_critical] == ["key_unique(product_id)"]
    msg = rep.message()
    assert "silver.products" in msg and "expect_column_values_to_be_unique on product_id" in msg and "'p1' x2" in msg
    rows = rep.to_rows()
    assert {r["check_name"] for r in rows} == {"key_unique(product_id)", "popularity_non_negative"}
    assert all(r["run_date"] == dt.date(2024, 1, 2) for r in rows)


def test_store_reports_replaces_only_the_validated_tables(tmp_path):
    """Re-storing a table's report for a run date replaces its rows and keeps other tables' rows."""
    from mmpipeline.lake import Lake
    from mmpipeline.validate import store_reports

    lake = Lake(tmp_path / "lake", engine="delta-rs")
    d = dt.date(2024, 1, 2)

    def rep(table_name, checks):
        return ValidationReport(table_name, table_name, [
            CheckResult(table_name, table_name, c, "expect_table_row_count_to_be_between", "", "critical", True, "3 rows")
            for c in checks], run_date=d)

    store_reports(lake, d, [rep("silver.products", ["a", "b"]), rep("gold.search_ranking", ["x"])])
    store_reports(lake, d, [rep("silver.products", ["a", "c"])])  # a re-run with a changed suite
    store_reports(lake, d, [rep("silver.products", ["a", "c"])])  # idempotent
    store_reports(lake, dt.date(2024, 1, 3), [rep("silver.products", ["a"])])
    got = lake.read_pandas("ops.validation", filters=[("run_date", "=", d)])
    assert sorted(zip(got.table_name, got.check_name)) == [
        ("gold.search_ranking", "x"), ("silver.products", "a"), ("silver.products", "c")]
    assert lake.count("ops.validation") == 4


@pytest.fixture(scope="module")
def gx_project():
    from mmpipeline.validate import GXProject

    return GXProject.ephemeral()


def _ranking(spark, rows):
    return spark.createDataFrame(rows, "query_id string, rank int, product_id string, score double")


def test_ranking_checks_on_spark_frame(spark, gx_project):
    """Every query has >= N results, scores finite, ranks dense and unique per query."""
    from mmpipeline.validate import ranking_checks, validate_dataframe

    good = [(q, r, f"p{r}", 1.0 / r) for q in ("q1", "q2") for r in (1, 2, 3)]
    rep = validate_dataframe(_ranking(spark, good), "gold.search_ranking", "ranking_ok", ranking_checks(3),
                             project=gx_project)
    assert rep.success and not rep.failed_critical, rep.message()
    assert rep.rows == 6 and len(rep.results) == len(ranking_checks(3))

    bad = [("q1", 1, "p1", 0.9), ("q1", 2, "p2", float("nan")), ("q1", 3, "p3", 0.1),  # NaN score
           ("q2", 1, "p1", 0.5), ("q2", 3, "p2", 0.4), ("q2", 3, "p3", 0.3),  # rank gap + repeat
           ("q3", 1, "p1", float("inf"))]  # too few results, infinite score
    rep = validate_dataframe(_ranking(spark, bad), "gold.search_ranking", "ranking_bad", ranking_checks(3),
                             project=gx_project)
    failed = {r.check_name: r for r in rep.failed_critical}
    assert set(failed) == {"min_results_per_query", "scores_finite", "ranks_dense_unique"}, rep.message()
    assert failed["scores_finite"].observed_value.startswith("2 unexpected row(s)")
    assert failed["min_results_per_query"].observed_value.startswith("1 unexpected row(s)")
    assert '"q3"' in failed["min_results_per_query"].observed_value
    assert '"q2"' in failed["ranks_dense_unique"].observed_value
    msg = rep.message()
    assert "gold.search_ranking" in msg and "ranks_dense_unique" in msg and "unexpected_rows_expectation" in msg
