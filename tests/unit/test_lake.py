"""The lake layer on real Spark + real Delta (delta-rs engine): atomic, idempotent writes."""

import datetime as dt

import pandas as pd
import pytest
from deltalake import DeltaTable

from mmpipeline.lake import Lake, LakeError
from mmpipeline.schemas import TableSpec, register

PART = register(TableSpec("test.part", [("run_date", "date"), ("k", "string"), ("v", "double"),
                                        ("m", "map<string,string>")], keys=["run_date", "k"],
                          partition_by=["run_date"]))
FLAT = register(TableSpec("test.flat", [("k", "string"), ("v", "double"), ("vec", "array<float>")], keys=["k"]))
D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


@pytest.fixture()
def lake(spark, tmp_path):
    return Lake(tmp_path / "lake", spark)


def _part(spark, d, rows):
    return spark.createDataFrame([(d, *r) for r in rows], "run_date date, k string, v double, m map<string,string>")


def test_partition_overwrite_is_idempotent_and_opens_with_deltalake(lake, spark):
    assert lake.engine == "delta-rs"
    lake.write("test.part", _part(spark, D1, [("a", 1.0, {"x": "1"}), ("b", 2.0, None)]), "overwrite", {"run_date": D1})
    lake.write("test.part", _part(spark, D2, [("c", 3.0, None)]), "overwrite", {"run_date": D2})
    first = sorted(map(tuple, lake.read("test.part").collect()))
    lake.write("test.part", _part(spark, D1, [("a", 1.0, {"x": "1"}), ("b", 2.0, None)]), "overwrite", {"run_date": D1})
    assert sorted(map(tuple, lake.read("test.part").collect())) == first
    dt_ = DeltaTable(lake.uri("test.part"))
    assert dt_.version() == 2
    assert len(dt_.to_pandas()) == 3
    assert lake.count("test.part") == 3


def test_rows_outside_the_partition_are_refused(lake, spark):
    with pytest.raises(LakeError, match="outside partition"):
        lake.write("test.part", _part(spark, D2, [("a", 1.0, None)]), "overwrite", {"run_date": D1})
    assert not lake.exists("test.part")


def test_failed_write_leaves_previous_version_readable(lake, spark):
    lake.write("test.flat", pd.DataFrame({"k": ["a"], "v": [1.0], "vec": [[1.0]]}), "overwrite")
    bad = spark.createDataFrame([("x", 1.0)], "k string, v double")  # lacks a column
    with pytest.raises(LakeError, match="lacks columns"):
        lake.write("test.flat", bad, "overwrite")
    failing = spark.range(3).selectExpr("cast(id as string) as k", "1.0 / 0 as v",
                                        "array(cast(raise_error('boom') as float)) as vec")
    with pytest.raises(Exception):
        lake.write("test.flat", failing, "overwrite")
    assert lake.read_pandas("test.flat")["k"].tolist() == ["a"]
    assert lake.version("test.flat") == 0
    assert not list((lake.root / "test" / "flat").glob("_staging/*"))


def test_merge_upserts_by_key_and_time_travel(lake, spark):
    df1 = spark.createDataFrame([("a", 1.0, [1.0]), ("b", 2.0, [2.0])], "k string, v double, vec array<float>")
    lake.merge("test.flat", df1)
    df2 = spark.createDataFrame([("a", 1.0, [1.0]), ("b", 5.0, [2.0]), ("c", 3.0, None)], "k string, v double, vec array<float>")
    m = lake.merge("test.flat", df2)
    assert m["num_target_rows_inserted"] == 1 and m["num_target_rows_updated"] == 1
    lake.merge("test.flat", df2)  # same data again: nothing changes
    cur = lake.read_pandas("test.flat").sort_values("k")
    assert cur["k"].tolist() == ["a", "b", "c"] and cur["v"].tolist() == [1.0, 5.0, 3.0]
    assert sorted(lake.read_pandas("test.flat", version=0)["v"]) == [1.0, 2.0]
    lake.restore("test.flat", 0)
    assert sorted(lake.read_pandas("test.flat")["v"]) == [1.0, 2.0]
    assert len(lake.history("test.flat")) >= 3


def test_pandas_writes_without_spark(tmp_path):
    lake = Lake(tmp_path / "lake")
    assert lake.spark is None
    lake.write("test.part", pd.DataFrame({"run_date": [D1], "k": ["a"], "v": [1], "m": [None]}), "overwrite", {"run_date": D1})
    lake.write("test.part", pd.DataFrame({"run_date": [D1], "k": ["a"], "v": [1], "m": [None]}), "overwrite", {"run_date": D1})
    assert lake.count("test.part") == 1


def test_merge_of_mixed_type_columns_updates_only_changed_rows(tmp_path):
    """Regression: the change predicate over double and boolean columns must be parenthesised."""
    register(TableSpec("test.mixed", [("k", "string"), ("x", "double"), ("ok", "boolean"), ("s", "string")], keys=["k"]))
    lake = Lake(tmp_path / "lake")
    lake.merge("test.mixed", pd.DataFrame({"k": ["a", "b"], "x": [1.0, 2.0], "ok": [True, False], "s": ["u", None]}))
    m = lake.merge("test.mixed", pd.DataFrame({"k": ["a", "b"], "x": [1.0, 3.0], "ok": [True, False], "s": ["u", None]}))
    assert m["num_target_rows_updated"] == 1
    assert lake.read_pandas("test.mixed").set_index("k")["x"].to_dict() == {"a": 1.0, "b": 3.0}
