"""delta-rs engine: Spark writes Parquet files into the table folder, delta-rs commits them.

Write protocol (one Delta commit, nothing collected to the driver):
1. Spark writes the conformed DataFrame with ``partitionBy`` into ``<table>/_staging/<uuid>/``.
2. Each data file is renamed into its final place ``<table>/<k=v>/...`` (same filesystem, atomic).
3. One ``AddAction`` per file (size, partition values, row count from the Parquet footer) is
   committed with ``create_write_transaction`` -- ``overwrite`` with partition filters replaces
   exactly that partition, atomically.
If anything fails before the commit, the files are removed and the previous version stays current.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from mmpipeline.schemas import TableSpec, arrow_schema, spark_schema

log = logging.getLogger(__name__)

_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _commit_props(metadata: dict[str, Any] | None):
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={k: str(v) for k, v in (metadata or {}).items()}) if metadata else None


def _partition_filters(partition: dict[str, Any] | None):
    if not partition:
        return None
    return [(k, "=", str(v)) for k, v in partition.items()]


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith((".", "_")))


def _stats(path: Path, schema: pa.Schema, partition_cols: list[str]) -> str:
    md = pq.read_metadata(path)
    stats: dict[str, Any] = {"numRecords": md.num_rows}
    # min/max/nulls for flat columns, for data skipping
    mins, maxs, nulls = {}, {}, {}
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    for ci, name in enumerate(names):
        if "." in name or name in partition_cols:
            continue
        field = schema.field(name) if name in schema.names else None
        if field is None or not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
                                 or pa.types.is_string(field.type) or pa.types.is_date(field.type)):
            continue
        lo = hi = None
        nc = 0
        ok = True
        for rg in range(md.num_row_groups):
            st = md.row_group(rg).column(ci).statistics
            if st is None or not st.has_min_max:
                ok = False
                if st is not None and st.null_count is not None:
                    nc += st.null_count
                continue
            nc += st.null_count or 0
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
        nulls[name] = nc
        if ok and lo is not None:
            if pa.types.is_date(field.type):
                lo, hi = str(lo), str(hi)
            if isinstance(lo, bytes):
                continue
            if isinstance(lo, float) and (lo != lo or hi != hi):
                continue
            mins[name], maxs[name] = lo, hi
    stats.update(minValues=mins, maxValues=maxs, nullCount=nulls)
    return json.dumps(stats, default=str)


def _partition_values(rel: Path, partition_cols: list[str]) -> dict[str, str | None]:
    vals: dict[str, str | None] = {}
    for part in rel.parts[:-1]:
        if "=" in part:
            k, v = part.split("=", 1)
            v = unquote(v)
            vals[k] = None if v == _HIVE_NULL else v
    return {c: vals.get(c) for c in partition_cols}


def write_spark(spark, uri: str, df, spec: TableSpec, mode: str, partition: dict | None,
                metadata: dict | None) -> int:
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction
    from deltalake.transaction import create_table_with_add_actions

    root = Path(uri)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / "_staging" / uuid.uuid4().hex
    moved: list[Path] = []
    try:
        writer = df.write.mode("error")
        if spec.partition_by:
            writer = writer.partitionBy(*spec.partition_by)
        writer.parquet(str(staging))
        actions = []
        schema = arrow_schema(spec)
        now_ms = int(time.time() * 1000)
        for f in _data_files(staging):
            rel = f.relative_to(staging)
            target_rel = Path(*rel.parts[:-1], f"{staging.name[:8]}-{rel.name}")
            target = root / target_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
            moved.append(target)
            actions.append(AddAction(
                path=target_rel.as_posix(), size=target.stat().st_size,
                partition_values=_partition_values(target_rel, spec.partition_by),
                modification_time=now_ms, data_change=True,
                stats=_stats(target, schema, spec.partition_by)))
        props = _commit_props(metadata)
        if not (root / "_delta_log").is_dir():
            create_table_with_add_actions(uri, _delta_schema(schema), actions, mode="error",
                                          partition_by=spec.partition_by or None, commit_properties=props)
        else:
            DeltaTable(uri).create_write_transaction(
                actions, mode=mode, schema=_delta_schema(schema), partition_by=spec.partition_by or None,
                partition_filters=_partition_filters(partition) if mode == "overwrite" else None,
                commit_properties=props)
        moved.clear()  # committed: the files belong to the table now
        return DeltaTable(uri).version()
    finally:
        for f in moved:
            f.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        _rmdir_empty(root / "_staging")


def _rmdir_empty(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def _delta_schema(schema: pa.Schema):
    from deltalake import Schema

    return Schema.from_arrow(schema)


def write_arrow(uri: str, data: pa.Table, spec: TableSpec, mode: str, partition: dict | None,
                metadata: dict | None) -> int:
    from deltalake import DeltaTable, write_deltalake

    Path(uri).mkdir(parents=True, exist_ok=True)
    predicate = None
    if mode == "overwrite" and partition:
        predicate = " AND ".join(f"{k} = '{v}'" for k, v in partition.items())
    write_deltalake(uri, data, mode=mode, partition_by=spec.partition_by or None, predicate=predicate,
                    commit_properties=_commit_props(metadata))
    return DeltaTable(uri).version()


def read_spark(spark, uri: str, spec: TableSpec, version: int | None):
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    dt = DeltaTable(uri, version=version)
    files = dt.file_uris()
    schema = spark_schema(spec)
    if not files:
        return spark.createDataFrame([], schema)
    reader = spark.read.option("basePath", uri)
    df = reader.parquet(*files)
    cols = []
    for f in schema.fields:
        cols.append((F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name))
    return df.select(cols)


def merge_spark(spark, uri: str, df, spec: TableSpec, keys: list[str], delete_missing: bool,
                metadata: dict | None) -> dict[str, Any]:
    """Stage the source with Spark (parallel, no driver collect), stream it into delta-rs' merge."""
    root = Path(uri)
    if not (root / "_delta_log").is_dir():  # a new table: Spark's files committed as they are
        version = write_spark(spark, uri, df, spec, "overwrite", None, metadata)
        from deltalake import DeltaTable

        rows = DeltaTable(uri, version=version).to_pyarrow_dataset().count_rows()
        return {"num_target_rows_inserted": rows, "num_target_rows_updated": 0, "num_target_rows_deleted": 0,
                "created": True}
    staging = root.parent / f"_{root.name}_merge_{uuid.uuid4().hex}"
    try:
        df.write.mode("error").parquet(str(staging))
        files = [str(p) for p in _data_files(staging)]
        schema = arrow_schema(spec)
        dataset = pads.dataset(files, schema=schema, format="parquet") if files else None
        if dataset is None:
            source = pa.Table.from_batches([], schema=schema)
        else:
            source = dataset.scanner().to_reader()
        return _merge(uri, source, schema, spec, keys, delete_missing, metadata)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def merge_arrow(uri: str, data: pa.Table, spec: TableSpec, keys: list[str], delete_missing: bool,
                metadata: dict | None) -> dict[str, Any]:
    return _merge(uri, data, arrow_schema(spec), spec, keys, delete_missing, metadata)


def _merge(uri, source, schema: pa.Schema, spec: TableSpec, keys, delete_missing, metadata) -> dict[str, Any]:
    from deltalake import DeltaTable, write_deltalake

    if not (Path(uri) / "_delta_log").is_dir():
        if isinstance(source, pa.RecordBatchReader):
            source = source.read_all()
        Path(uri).mkdir(parents=True, exist_ok=True)
        write_deltalake(uri, source, mode="error", partition_by=spec.partition_by or None,
                        commit_properties=_commit_props(metadata))
        return {"num_target_rows_inserted": source.num_rows, "num_target_rows_updated": 0,
                "num_target_rows_deleted": 0, "created": True}
    dt = DeltaTable(uri)
    pred = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    # only rewrite rows whose content changed: compare non-key columns null-safely
    others = [c for c in spec.column_names if c not in keys]
    changed = " OR ".join(f"(t.{c} IS DISTINCT FROM s.{c})" for c in others if not _is_nested(schema.field(c).type))
    builder = dt.merge(source, predicate=pred, source_alias="s", target_alias="t",
                       commit_properties=_commit_props(metadata))
    builder = builder.when_matched_update_all(predicate=changed or None).when_not_matched_insert_all()
    if delete_missing:
        builder = builder.when_not_matched_by_source_delete()
    metrics = builder.execute()
    return dict(metrics)


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_map(t) or pa.types.is_struct(t) or pa.types.is_large_list(t)
