"""Writing embed results: new or changed vectors and the deletions of vanished entities of one
(table, modality, model) land in **one** Delta commit -- a merge on the table's keys
(id, modality, model_name), never a rewrite of the table.

The merge source is the new vectors plus one *deletion row* per stored vector to drop: the same
key with a NULL ``content_hash`` (every stored vector has a content hash, so the marker cannot
clash with data). The merge then

* deletes matched rows whose source row is a deletion row,
* updates matched rows whose content (hash, model version, vector ...) changed,
* inserts unmatched rows that are not deletion rows.

Sources: an Arrow table (local engine) or a Spark DataFrame (spark engine; staged to Parquet by
the executors and streamed into delta-rs' merge, so the driver never holds the vectors). Tables
of the ``delta-spark`` engine are merged with Delta's own ``MERGE`` from Spark.

Imports nothing from the rest of :mod:`mmpipeline.embed`.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa

from mmpipeline.lake import conform_arrow, conform_spark
from mmpipeline.schemas import arrow_schema, table

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.lake import Lake

log = logging.getLogger(__name__)

MARKER = "content_hash"  # NULL in a source row = delete the stored row with this key


def deletion_rows(name: str, id_col: str, ids: Sequence[str], modality: str, model_name: str) -> pa.Table:
    """Deletion rows (key + NULL content hash) in the table's schema."""
    schema = arrow_schema(table(name))
    n = len(ids)
    cols = {f.name: pa.nulls(n, f.type) for f in schema}
    cols[id_col] = pa.array(list(ids), pa.string())
    cols["modality"] = pa.array([modality] * n, pa.string())
    cols["model_name"] = pa.array([model_name] * n, pa.string())
    return pa.table(cols, schema=schema)


def conform(name: str, data: Any) -> pa.Table:
    """Arrow/pandas data in the table's registered schema (column order and types)."""
    return conform_arrow(data, table(name))


def _clauses(keys: list[str], columns: list[str], nested: set[str]) -> tuple[str, str, str]:
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    changed = " OR ".join(f"(t.{c} IS DISTINCT FROM s.{c})" for c in columns if c not in keys and c not in nested)
    return on, f"s.{MARKER} IS NULL", f"s.{MARKER} IS NOT NULL" + (f" AND ({changed})" if changed else "")


def _commit_props(metadata: dict[str, Any] | None):
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={k: str(v) for k, v in metadata.items()}) if metadata else None


def _merge_rs(uri: str, source, schema: pa.Schema, keys: list[str], metadata: dict[str, Any] | None,
              partition_by: list[str] | None = None) -> dict[str, Any]:
    from deltalake import DeltaTable, write_deltalake

    nested = {f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
              or pa.types.is_struct(f.type) or pa.types.is_map(f.type)}
    if not (Path(uri) / "_delta_log").is_dir():  # first write: only the upserts (nothing to delete)
        import pyarrow.compute as pc

        data = source.read_all() if isinstance(source, pa.RecordBatchReader) else source
        if data[MARKER].null_count:  # a filter copies every column, the vectors too (1.5 GB at 1M products)
            data = data.filter(pc.is_valid(data[MARKER]))
        Path(uri).mkdir(parents=True, exist_ok=True)
        write_deltalake(uri, data, mode="error", partition_by=partition_by or None,
                        commit_properties=_commit_props(metadata))
        return {"num_target_rows_inserted": data.num_rows, "num_target_rows_updated": 0,
                "num_target_rows_deleted": 0, "created": True}
    on, is_delete, is_update = _clauses(keys, schema.names, nested)
    return dict(DeltaTable(uri).merge(source, predicate=on, source_alias="s", target_alias="t",
                                      commit_properties=_commit_props(metadata))
                .when_matched_delete(predicate=is_delete)
                .when_matched_update_all(predicate=is_update)
                .when_not_matched_insert_all(predicate=f"s.{MARKER} IS NOT NULL")
                .execute())


def _merge_delta_spark(spark, uri: str, df, keys: list[str], metadata: dict[str, Any] | None) -> dict[str, Any]:
    import json

    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if not DeltaTable.isDeltaTable(spark, uri):
        w = df.where(F.col(MARKER).isNotNull()).write.format("delta").mode("error")
        if metadata:
            w = w.option("userMetadata", json.dumps(metadata, default=str))
        w.save(uri)
        return {"created": True}
    if metadata:
        spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", json.dumps(metadata, default=str))
    others = [c for c in df.columns if c not in keys]
    changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in others)
    try:
        (DeltaTable.forPath(spark, uri).alias("t")
         .merge(df.alias("s"), " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys))
         .whenMatchedDelete(condition=f"s.`{MARKER}` IS NULL")
         .whenMatchedUpdateAll(condition=f"s.`{MARKER}` IS NOT NULL AND ({changed})")
         .whenNotMatchedInsertAll(condition=f"s.`{MARKER}` IS NOT NULL")
         .execute())
    finally:
        if metadata:
            spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
    last = DeltaTable.forPath(spark, uri).history(1).collect()[0]
    return dict(last["operationMetrics"] or {})


def commit(lake: "Lake", name: str, source: Any, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``source`` (vectors and deletion rows; Arrow table or Spark DataFrame) into ``name`` in
    one commit. Returns the merge metrics."""
    spec = table(name)
    uri = lake.uri(name)
    spark_df = type(source).__module__.startswith("pyspark.sql")
    if lake.engine == "delta-spark":
        spark = lake.spark
        if not spark_df:
            from mmpipeline.schemas import spark_schema

            source = spark.createDataFrame(conform_arrow(source, spec).to_pandas(), schema=spark_schema(spec))
        return _merge_delta_spark(spark, uri, conform_spark(source, spec), spec.keys, metadata)
    schema = arrow_schema(spec)
    if not spark_df:
        return _merge_rs(uri, conform_arrow(source, spec), schema, spec.keys, metadata, spec.partition_by)
    # delta-rs: the executors write the source as Parquet next to the table, the driver streams it
    staging = Path(uri).parent / f"_{Path(uri).name}_embed_{uuid.uuid4().hex}"
    try:
        conform_spark(source, spec).write.mode("error").parquet(str(staging))
        files = sorted(str(p) for p in staging.rglob("*.parquet") if not p.name.startswith((".", "_")))
        if not files:
            return {"num_source_rows": 0}
        import pyarrow.dataset as pads

        reader = pads.dataset(files, schema=schema, format="parquet").scanner().to_reader()
        return _merge_rs(uri, reader, schema, spec.keys, metadata, spec.partition_by)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
