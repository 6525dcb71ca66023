"""Suite construction from the config and the previous-run lookups (no Spark, no GE run)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from mmpipeline.schemas import table
from mmpipeline.validate.suites import ROW_COUNT_CHECK, ranking_checks, row_count_bounds, silver_checks


def test_row_count_bounds():
    assert row_count_bounds(None, 0.5, 1) == (1, None)
    assert row_count_bounds(0, 0.5, 1) == (1, None)
    assert row_count_bounds(1000, 0.5, 1) == (500, 1500)
    assert row_count_bounds(3, 0.1, 1) == (3, 3)


def test_silver_suites_follow_the_config(make_config):
    cfg = make_config({"clean.max_price": 500.0, "quality.min_decodable_image_share": 0.9,
                       "quality.max_row_count_change": 0.2})
    checks = {c.check_name(): c for c in silver_checks(table("silver.products"), cfg, 100, "2024-01-01")}
    assert {"schema_columns", ROW_COUNT_CHECK, "key_not_null(product_id)", "key_unique(product_id)", "price_range",
            "rating_range", "decodable_image_share", "image_status_domain"} <= set(checks)
    price = checks["price_range"].build().configuration.kwargs
    assert (price["min_value"], price["max_value"]) == (0, 500.0)
    rc = checks[ROW_COUNT_CHECK].build().configuration.kwargs
    assert (rc["min_value"], rc["max_value"]) == (80, 120)
    share = checks["decodable_image_share"].build()
    assert share.configuration.kwargs["mostly"] == 0.9 and share.severity == "critical"
    assert checks["image_status_domain"].severity == "warning"
    judg = {c.check_name(): c for c in silver_checks(table("silver.judgments"), cfg)}
    grade = judg["grade_domain"].build().configuration.kwargs
    assert (grade["min_value"], grade["max_value"]) == (cfg.clean.grade_min, cfg.clean.grade_max) == (0.0, 3.0)
    assert "key_unique(query_id,product_id)" in judg
    assert judg[ROW_COUNT_CHECK].build().configuration.kwargs.get("max_value") is None  # first run: no upper bound
    names = [c.check_name() for c in ranking_checks(10)]
    assert len(names) == len(set(names)) and "ranks_dense_unique" in names


def test_previous_row_count_from_delta_history(tmp_path):
    from mmpipeline.lake import Lake
    from mmpipeline.validate.stage import previous_row_count, previous_row_count_from_history

    lake = Lake(tmp_path / "lake", engine="delta-rs")
    cols = table("silver.judgments").column_names

    def frame(n, d):
        return pd.DataFrame([{"query_id": f"q{i}", "product_id": "p", "grade": 1.0, "run_date": d} for i in range(n)],
                            columns=cols)

    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    lake.write("silver.judgments", frame(5, d1), mode="overwrite", metadata={"run_date": str(d1)})
    lake.write("silver.judgments", frame(7, d2), mode="overwrite", metadata={"run_date": str(d2)})
    assert previous_row_count_from_history(lake, "silver.judgments", d1) == (None, "")
    assert previous_row_count_from_history(lake, "silver.judgments", d2) == (5, "2024-01-01 (Delta version 0)")
    assert previous_row_count_from_history(lake, "silver.judgments", d3) == (7, "2024-01-02 (Delta version 1)")
    assert previous_row_count(lake, "silver.judgments", d3) == (None, "")  # no ops.validation yet
