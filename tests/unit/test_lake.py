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


ACC = register(TableSpec("test.acc", [("run_date", "date"), ("stage", "string"), ("table_name", "string"),
                                      ("n", "long")], keys=["run_date", "stage", "table_name"],
                         partition_by=["run_date"]))


def _acc(day, rows):
    return pd.DataFrame([{"run_date": day, "stage": s, "table_name": t, "n": n} for s, t, n in rows])


def test_filtered_reads_work_on_string_view_files_written_by_merges(tmp_path):
    """Regression (issue 9.1): delta-rs merges write string_view Parquet columns; a filter on such a
    column whose file statistics cannot decide it raised ArrowNotImplementedError (string, string_view)."""
    import pyarrow.parquet as pq

    lake = Lake(tmp_path / "lake")
    lake.merge("test.acc", _acc(D1, [("clean", "silver.a", 1), ("clean", "silver.b", 2), ("ingest", "bronze.a", 3)]))
    lake.merge("test.acc", _acc(D1, [("clean", "silver.a", 5), ("clean", "silver.b", 2), ("ingest", "bronze.a", 3)]))
    lake.merge("test.acc", _acc(D2, [("clean", "silver.a", 7)]))
    files = DeltaTable(lake.uri("test.acc")).file_uris()
    assert any(pa_types_is_view(pq.read_schema(f).field("table_name").type) for f in files)  # the trigger is there
    t = lake.read_arrow("test.acc", filters=[("run_date", "=", D1), ("stage", "=", "clean"),
                                             ("table_name", "=", "silver.a")])
    assert t.column("n").to_pylist() == [5] and t.schema.field("table_name").type == pa_string()
    assert lake.read_pandas("test.acc", columns=["n"], filters=[("table_name", "in", ["silver.a", "silver.b"])]
                            )["n"].sort_values().tolist() == [2, 5, 7]
    assert lake.count("test.acc", filters=[("stage", "=", "clean")]) == 3
    assert lake.count("test.acc", filters=[("run_date", "=", D2)]) == 1
    assert lake.count("test.acc") == 4
    # pruning still applies: a filter no file can match reads nothing
    assert lake.read_arrow("test.acc", filters=[("run_date", "=", dt.date(2030, 1, 1))]).num_rows == 0


def pa_types_is_view(t):
    import pyarrow as pa

    return pa.types.is_string_view(t)


def pa_string():
    import pyarrow as pa

    return pa.string()


def test_commit_metadata_has_one_shape_for_both_engines(tmp_path):
    from mmpipeline.lake import normalise_commit

    # delta-rs: custom metadata at the top level of the commit info
    lake = Lake(tmp_path / "lake")
    lake.merge("test.acc", _acc(D1, [("clean", "x", 1)]), metadata={"run_date": "2024-01-01", "stage": "clean"})
    h = lake.history("test.acc")[0]
    assert h["metadata"] == {"run_date": "2024-01-01", "stage": "clean"}
    # delta-spark: the same metadata as a JSON string under userMetadata (shape of its commitInfo)
    spark_info = {"timestamp": 1, "operation": "WRITE", "operationParameters": {"mode": "Overwrite"},
                  "isolationLevel": "Serializable", "isBlindAppend": False, "version": 3,
                  "operationMetrics": {"numFiles": "1"}, "engineInfo": "Apache-Spark/4.0.0 Delta-Lake/4.0.0",
                  "txnId": "abc", "userMetadata": '{"mmp_run_date": "2024-01-02", "mmp_input_versions": "{}"}'}
    assert normalise_commit(spark_info)["metadata"] == {"mmp_run_date": "2024-01-02", "mmp_input_versions": "{}"}
    rs_info = {"timestamp": 1, "operation": "WRITE", "clientVersion": "delta-rs.1", "version": 2,
               "mmp_run_date": "2024-01-02", "mmp_input_versions": "{}"}
    assert normalise_commit(rs_info)["metadata"] == normalise_commit(spark_info)["metadata"]
