"""delta-spark engine: used when the Delta Lake jars are on Spark's classpath (cluster, Docker)."""

from __future__ import annotations

from typing import Any

from mmpipeline.schemas import TableSpec


def _options(writer, metadata: dict | None):
    if metadata:
        import json

        writer = writer.option("userMetadata", json.dumps(metadata, default=str))
    return writer


def write_spark(spark, uri: str, df, spec: TableSpec, mode: str, partition: dict | None,
                metadata: dict | None) -> int:
    from delta.tables import DeltaTable

    writer = _options(df.write.format("delta").mode(mode), metadata)
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    if mode == "overwrite" and partition:
        writer = writer.option("replaceWhere", " AND ".join(f"{k} = '{v}'" for k, v in partition.items()))
    writer.save(uri)
    return DeltaTable.forPath(spark, uri).history(1).collect()[0]["version"]


def read_spark(spark, uri: str, spec: TableSpec, version: int | None):
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(uri).select(*spec.column_names)


def merge_spark(spark, uri: str, df, spec: TableSpec, keys: list[str], delete_missing: bool,
                metadata: dict | None) -> dict[str, Any]:
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, uri):
        write_spark(spark, uri, df, spec, "overwrite", None, metadata)
        return {"created": True}
    others = [c for c in spec.column_names if c not in keys]
    changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in others)
    m = (DeltaTable.forPath(spark, uri).alias("t")
         .merge(df.alias("s"), " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys))
         .whenMatchedUpdateAll(condition=changed or None).whenNotMatchedInsertAll())
    if delete_missing:
        m = m.whenNotMatchedBySourceDelete()
    m.execute()
    last = DeltaTable.forPath(spark, uri).history(1).collect()[0]
    return dict(last["operationMetrics"] or {})


def restore(spark, uri: str, version: int) -> int:
    from delta.tables import DeltaTable

    dt = DeltaTable.forPath(spark, uri)
    dt.restoreToVersion(version)
    return dt.history(1).collect()[0]["version"]
