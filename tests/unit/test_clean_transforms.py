"""Each clean transform as a pure function on tiny Spark frames (real Spark, no lake)."""

import datetime as dt

import pytest

from mmpipeline.clean import transforms as T
from mmpipeline.config import CleanConfig
from mmpipeline.schemas import ENTITY_COLUMNS, spark_schema

META = [("_source_file", "string"), ("_row_id", "long"), ("_raw", "string"), ("_corrupt_record", "string"),
        ("_batch_id", "string")]


def _bronze(spark, entity, rows):
    cols = ENTITY_COLUMNS[entity] + META
    names = [c for c, _ in cols]
    full = []
    for i, r in enumerate(rows):
        d = {n: None for n in names}
        d.update(_row_id=i, _raw=str(r), _source_file="f.csv", _batch_id="b", **r)
        full.append(tuple(d[n] for n in names))
    return spark.createDataFrame(full, spark_schema(cols))


def test_tag_products_dedupes_latest_and_quarantines_bad_rows(spark):
    rows = [
        {"product_id": " 1 ", "title": "<b>Drill</b> &amp; Bits", "price": "$1,299.00", "updated_at": "2026-01-01"},
        {"product_id": "1", "title": "Drill v2", "price": "$999", "updated_at": "2026-02-01T00:00:00Z"},  # newest
        {"product_id": "1", "title": "Drill v0", "price": "$5", "updated_at": None},                      # oldest
        {"product_id": "2", "title": "Saw", "price": "10 EUR", "attributes": {"colour": " red ", "size": " "}},
        {"product_id": "2", "title": "Saw", "price": "10 EUR", "attributes": {"colour": " red ", "size": " "}},
        {"product_id": "3", "title": "Hammer", "price": "-1"},
        {"product_id": "4", "title": "X", "price": "1"},
        {"product_id": None, "title": "Ghost", "price": "1"},
        {"product_id": "5", "title": "Nail", "price": "lots"},
        {"product_id": "6", "title": "Broken", "_corrupt_record": "6,\"Broken"},
    ]
    tagged = T.tag_products(_bronze(spark, "products", rows), CleanConfig()).cache()
    c = T.outcome_counts(tagged)
    assert (c["in"], c["kept"], c["folded"], c["quarantined"]) == (10, 2, 1, 7)
    assert c["reasons"] == {"duplicate": 2, "negative_price": 1, "title_too_short": 1, "missing_id": 1,
                            "invalid_price": 1, "malformed_record": 1}
    silver = {r["product_id"]: r for r in T.products_silver(tagged).collect()}
    assert silver["1"]["title"] == "Drill v2" and silver["1"]["price"] == 999.0 and silver["1"]["currency"] == "USD"
    assert silver["2"]["currency"] == "EUR" and silver["2"]["attributes"] == {"colour": "red"}
    assert len(silver["2"]["text_hash"]) == 64
    q = T.quarantine_rows(tagged, "product_id", dt.date(2026, 3, 1)).collect()
    assert len(q) == 7 and all(r["reason"] and r["detail"] and r["record"] for r in q)
    dup = [r for r in q if r["reason"] == "duplicate"]
    assert {r["record_key"] for r in dup} == {"1"} and "superseded" in dup[0]["detail"]


def test_queries_judgments_interactions(spark):
    cfg = CleanConfig()
    qb = _bronze(spark, "queries", [{"query": "Men  Shirts!", "frequency": "3"}, {"query": "men shirts"},
                                    {"query": "  "}, {"query": "bags", "frequency": "-2"}])
    qt = T.tag_queries(qb)
    c = T.outcome_counts(qt)
    assert (c["kept"], c["quarantined"]) == (2, 2)
    qs = T.queries_silver(qt).collect()
    assert len(qs) == 1 and qs[0]["query_norm"] == "men shirts" and qs[0]["frequency"] == 4
    products = spark.createDataFrame([("p1",), ("p2",)], "product_id string")
    jb = _bronze(spark, "judgments", [{"query": "men shirts", "product_id": "p1", "grade": "3"},
                                      {"query": "MEN SHIRTS", "product_id": "p1", "grade": "2"},
                                      {"query": "men shirts", "product_id": "p9", "grade": "1"},
                                      {"query": "men shirts", "product_id": "p2", "grade": "5"}])
    jt = T.tag_judgments(jb, cfg, products)
    assert T.outcome_counts(jt)["reasons"] == {"unknown_product": 1, "grade_out_of_range": 1}
    js = T.judgments_silver(jt, "test").collect()
    assert len(js) == 1 and js[0]["grade"] == 2.5 and js[0]["query_id"] == qs[0]["query_id"]
    ib = _bronze(spark, "interactions", [
        {"query": "men shirts", "product_id": "p1", "event_type": "Click", "event_ts": "1767225600", "session_id": "s"},
        {"query": "men shirts", "product_id": "p1", "event_type": "click", "event_ts": "2026-01-01 00:00:00", "session_id": "s"},
        {"query": "men shirts", "product_id": "p1", "event_type": "hover", "event_ts": "2026-01-01", "session_id": "s"}])
    it = T.tag_interactions(ib, products)
    c = T.outcome_counts(it)
    assert (c["kept"], c["folded"], c["quarantined"]) == (1, 1, 1)  # epoch and ISO are the same instant
    extra = T.derived_queries(None, jt.where("_outcome = 'kept'"), it.where("_outcome = 'kept'")).collect()
    assert [r["query_norm"] for r in extra] == ["men shirts"]


@pytest.mark.parametrize("raw", ["2026-02-01T10:00:00Z", "2026-02-01 10:00:00", "1769940000", "1769940000000"])
def test_parse_timestamp(spark, raw):
    from pyspark.sql import functions as F

    v = spark.createDataFrame([(raw,)], "s string").select(T.parse_timestamp(F.col("s")).alias("t")).first()["t"]
    assert v is not None and v.year == 2026


def test_carry_unchanged_keeps_run_date_of_unchanged_rows(spark):
    old = spark.createDataFrame([("a", 1.0, dt.date(2026, 1, 1)), ("b", 2.0, dt.date(2026, 1, 1))],
                                "k string, v double, run_date date")
    new = spark.createDataFrame([("a", 1.0, dt.date(2026, 2, 1)), ("b", 3.0, dt.date(2026, 2, 1))],
                                "k string, v double, run_date date")
    got = {r["k"]: r["run_date"] for r in T.carry_unchanged(new, old, ["k"]).collect()}
    assert got == {"a": dt.date(2026, 1, 1), "b": dt.date(2026, 2, 1)}


def test_check_images_runs_on_executors(spark, tmp_path):
    from PIL import Image

    from mmpipeline.clean.images import check_images
    from mmpipeline.config import ImageLimits

    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    df = spark.createDataFrame([("1", "a.png"), ("2", "b.png"), ("3", "../x.png")], "product_id string, image_ref string")
    got = {r["product_id"]: r["image_status"] for r in check_images(df, str(tmp_path), ImageLimits(), 2).collect()}
    assert got == {"1": "ok", "2": "missing", "3": "outside_root"}
