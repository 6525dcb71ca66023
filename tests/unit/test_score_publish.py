"""The pure parts of publishing: the publish decision, which event is current, which run a rollback
restores, event details, and the content fingerprint -- on small hand-made frames."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from mmpipeline.context import StageError
from mmpipeline.score.index import current_of, event_detail, rollback_target
from mmpipeline.score.publish import publish_decision

D1, D2, D3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)


def _ev(*rows):
    """An event log: (action, run_date, status, index_version, ranking_version, fingerprint)."""
    base = pd.Timestamp("2026-11-01T00:00:00Z")
    return pd.DataFrame([{"event_at": base + pd.Timedelta(minutes=i), "action": a, "run_date": rd, "status": st,
                          "index_version": iv, "ranking_version": rv, "queries": 2, "rows": 20,
                          "detail": json.dumps({"fingerprint": fp})}
                         for i, (a, rd, st, iv, rv, fp) in enumerate(rows)])


LOG = _ev(("publish", D1, "pending", None, 1, "f1"), ("publish", D1, "current", 0, 1, "f1"),
          ("publish", D2, "pending", None, 2, "f2"), ("publish", D2, "current", 1, 2, "f2"),
          ("reject", D3, "rejected", None, 3, None),
          ("publish", D3, "pending", None, 4, "f3"),  # killed before it committed
          ("rollback", D1, "current", 2, 1, "f1"))


def test_current_is_the_latest_current_publish_or_rollback():
    cur = current_of(LOG)
    assert cur["action"] == "rollback" and cur["index_version"] == 2 and cur["run_date"] == D1
    assert current_of(LOG.iloc[:5])["index_version"] == 1  # a reject never becomes current
    assert current_of(LOG.iloc[:1]) is None  # a pending publish is not served
    assert current_of(LOG.iloc[:0]) is None


def test_publish_decision():
    cur = current_of(LOG.iloc[:4])  # D2 served, from ranking version 2
    assert publish_decision(D1, None, 0, force=False).action == "publish"
    older = publish_decision(D1, cur, 9, force=False)
    assert older.action == "refuse" and "run 2026-11-01 is older than the served index (run 2026-11-02" in older.reason
    assert "\n" not in older.reason and "force=true" in older.reason
    forced = publish_decision(D1, cur, 9, force=True)
    assert forced.action == "publish" and forced.forced
    assert publish_decision(D2, cur, 2, force=False).action == "noop"  # the same ranking version
    # a new ranking version of the served date: publish, unless its rows are identical
    assert publish_decision(D2, cur, 5, force=False).action == "publish"
    assert publish_decision(D2, cur, 5, force=False, fingerprint="f2").action == "noop"
    assert publish_decision(D2, cur, 5, force=False, fingerprint="other").action == "publish"
    newer = publish_decision(D3, cur, 5, force=True)
    assert newer.action == "publish" and not newer.forced  # force only counts when it replaces a newer run
    # the same date served by a rollback is published again (a rollback is not that run's publish)
    assert publish_decision(D1, current_of(LOG), 1, force=False).action == "publish"


def test_rollback_target():
    cur = current_of(LOG.iloc[:4])
    assert rollback_target(LOG.iloc[:4], cur)["rd"] == D1  # the run published before the served one
    assert rollback_target(LOG, current_of(LOG), run_date=D2)["index_version"] == 1
    assert rollback_target(LOG, current_of(LOG), version=0)["rd"] == D1
    with pytest.raises(StageError, match=r"run 2026-11-03 was never published"):
        rollback_target(LOG, current_of(LOG), run_date=D3)  # rejected and aborted runs are not targets
    with pytest.raises(StageError, match=r"index version 7 was never published; published versions: \[0, 1\]"):
        rollback_target(LOG, current_of(LOG), version=7)
    with pytest.raises(StageError, match="nothing has been published yet"):
        rollback_target(LOG.iloc[:1], None)
    with pytest.raises(StageError, match=r"no published run before the current one \(2026-11-01\)"):
        rollback_target(LOG.iloc[:2], current_of(LOG.iloc[:2]))


def test_event_detail_reads_json_and_plain_text():
    assert event_detail({"detail": '{"op_id": "x", "base_version": 3}'}) == {"op_id": "x", "base_version": 3}
    assert event_detail("an old plain note") == {"note": "an old plain note"}
    assert event_detail("{not json") == {"note": "{not json"}
    assert event_detail(None) == {} and event_detail({"detail": ""}) == {}


def test_content_fingerprint_is_order_independent_and_sees_every_value(spark):
    from mmpipeline.score.publish import content_fingerprint

    rows = [("q1", "p1", 1, 0.9), ("q1", "p2", 2, 0.5), ("q2", "p1", 1, 0.7)]
    cols = ["query_id", "product_id", "rank", "score"]
    fp = content_fingerprint(spark.createDataFrame(rows, cols))
    assert fp.startswith("3:")
    assert content_fingerprint(spark.createDataFrame(rows[::-1], cols)) == fp
    changed = [rows[0], rows[1], ("q2", "p1", 1, 0.71)]
    assert content_fingerprint(spark.createDataFrame(changed, cols)) != fp
    # swapping two values between rows keeps every column's multiset but not the rows
    swapped = [("q1", "p1", 1, 0.5), ("q1", "p2", 2, 0.9), ("q2", "p1", 1, 0.7)]
    assert content_fingerprint(spark.createDataFrame(swapped, cols)) != fp


# ------------------------------------------------------------------------- near-duplicate collapse

DUP_PRODUCTS = pd.DataFrame({
    "product_id": ["p1", "p2", "p3", "p4", "p5", "p6", "p7"],
    "title": ["Ceiling Mounted Light Fixture", "ceiling-mounted  light fixture!", "Wall Lamp",
              "CEILING MOUNTED LIGHT FIXTURE", "Red T-shirt", "red t shirt", "Lámpara 2½"],
    # p5/p6: the same title but another photo (another colour): not the same listing
    "image_hash": [None, None, "h3", None, "ha", "hb", None],
})


def _scored(rows):
    return pd.DataFrame(rows, columns=["query_id", "query", "product_id", "candidate_source", "score"])


def test_title_key_normalises_case_punctuation_and_spacing_like_the_gate_sql(spark):
    from mmpipeline.score.dedupe import title_key, title_key_sql

    titles = list(DUP_PRODUCTS["title"]) + ["  Ölfilter_XL -- 10cm ", "a_b", ""]
    py = [title_key(t) for t in titles]
    assert py[0] == py[1] == py[3] == "ceiling mounted light fixture" and py[6] == "lámpara 2½"
    sdf = spark.createDataFrame(pd.DataFrame({"title": titles}))
    sql = [r[0] for r in sdf.selectExpr(title_key_sql("title")).collect()]
    assert sql == py


def test_collapse_keeps_the_best_scored_listing_per_group_and_records_the_others():
    from mmpipeline.score.dedupe import collapse, duplicate_groups

    groups = duplicate_groups(DUP_PRODUCTS)
    by_pid = dict(zip(groups["product_id"], groups["group_id"]))
    assert set(by_pid) == {"p1", "p2", "p4"}  # p5/p6 differ by image; p3, p7 are alone
    assert set(duplicate_groups(DUP_PRODUCTS, key="title")["product_id"]) == {"p1", "p2", "p4", "p5", "p6"}
    assert duplicate_groups(DUP_PRODUCTS).equals(groups)  # stable group ids
    scored = _scored([("q1", "light", "p1", "bm25", 0.5), ("q1", "light", "p2", "text", 0.9),
                      ("q1", "light", "p3", "text", 0.7), ("q1", "light", "p4", "bm25", 0.1),
                      ("q1", "light", "p5", "text", 0.2), ("q1", "light", "p6", "text", 0.3),
                      ("q2", "shirt", "p4", "bm25", 0.8), ("q2", "shirt", "p7", "bm25", float("nan"))])
    ranking, dups = collapse(scored, groups, k=3)
    q1 = ranking[ranking["query_id"] == "q1"]
    assert list(q1["product_id"]) == ["p2", "p3", "p6"] and list(q1["rank"]) == [1, 2, 3]
    assert list(ranking[ranking["query_id"] == "q2"]["product_id"]) == ["p4", "p7"]
    assert list(ranking.columns) == list(scored.columns) + ["rank"]
    assert list(dups["product_id"]) == ["p1", "p4"]
    assert set(dups["shown_product_id"]) == {"p2"} and set(dups["shown_rank"]) == {1}
    assert set(dups["group_id"]) == {by_pid["p2"]}
    # a hidden product whose shown one fell out of the top k is not recorded
    _, dups1 = collapse(scored[scored["product_id"] != "p3"], groups, k=0)
    assert dups1.empty


def test_publish_gate_refuses_duplicate_titles_in_a_top_10_unless_collapsed(spark):
    from mmpipeline.score.checks import CATALOG_VIEW, publish_checks
    from mmpipeline.score.dedupe import collapse, duplicate_groups
    from mmpipeline.validate import validate_dataframe

    rng = np.random.default_rng(0)
    extra = pd.DataFrame({"product_id": [f"x{i}" for i in range(12)], "title": [f"item {i}" for i in range(12)],
                          "image_hash": None})
    catalog = pd.concat([DUP_PRODUCTS, extra], ignore_index=True)
    spark.createDataFrame(catalog, schema="product_id string, title string, image_hash string") \
        .createOrReplaceTempView(CATALOG_VIEW)
    scored = _scored([(q, q, p, "text", float(s)) for q in ("q_raw", "q_collapsed")
                      for p, s in zip(catalog["product_id"], rng.permutation(len(catalog)) / 10)])
    checks = [c for c in publish_checks(5, catalog=True, duplicate_k=10) if c.name == "no_duplicate_listings"]
    from mmpipeline.score.scoring import rank_top

    raw = rank_top(scored[scored["query_id"] == "q_raw"], 10)
    # p1, p2, p4 share a normalised title: at least two of them are in the raw top 10
    assert raw["product_id"].isin(["p1", "p2", "p4"]).sum() >= 2
    collapsed, _ = collapse(scored[scored["query_id"] == "q_collapsed"], duplicate_groups(catalog), 10)
    assert len(collapsed) == 10
    df = pd.concat([raw, collapsed]).assign(run_date=D1, model_name="m", model_version="1")
    try:
        report = validate_dataframe(spark.createDataFrame(df), "gold.search_ranking", "t", checks)
    finally:
        spark.catalog.dropTempView(CATALOG_VIEW)
    (res,) = report.results
    assert res.error is None and not res.success
    assert "q_raw" in res.observed_value and "q_collapsed" not in res.observed_value


def test_collapse_spark_matches_the_pandas_collapse(spark):
    from mmpipeline.score.dedupe import collapse, collapse_spark, duplicate_groups

    groups = duplicate_groups(DUP_PRODUCTS, key="title")
    rng = np.random.default_rng(1)
    scored = _scored([(q, q, p, "text", float(s)) for q in ("q1", "q2")
                      for p, s in zip(DUP_PRODUCTS["product_id"], rng.permutation(7) / 7)])
    want, want_d = collapse(scored, groups, 4)
    got, got_d = collapse_spark(spark, spark.createDataFrame(scored), groups, 4)
    key = ["query_id", "rank"]
    got = got.toPandas()[list(want.columns)].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want.sort_values(key).reset_index(drop=True), check_dtype=False)
    dk = ["query_id", "product_id"]
    got_d = got_d.toPandas()[list(want_d.columns)].sort_values(dk).reset_index(drop=True)
    pd.testing.assert_frame_equal(got_d, want_d.sort_values(dk).reset_index(drop=True), check_dtype=False)
    assert len(want_d) > 0
