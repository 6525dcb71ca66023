"""The lake: every read and write of a Delta table goes through :class:`Lake`.

Two engines sit behind one interface (see DESIGN.md, "Delta Lake engines"):

* ``delta-spark`` when the Delta jars are on Spark's classpath (cluster and Docker images);
* ``delta-rs`` otherwise: Spark writes the Parquet data files in parallel straight into the table
  folder, then delta-rs commits them as Add (and Remove) actions in **one** transaction. Nothing is
  collected to the driver. Merges stream Spark-written Parquet into delta-rs' merge.

Small tables (ops records, metrics) can be written from pandas or Arrow without Spark at all.
Every write is a single Delta commit: a failed write leaves the previous version readable, and
``overwrite`` with ``partition=`` replaces exactly one partition (re-runs of a run date are
idempotent).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from mmpipeline.schemas import TableSpec, arrow_schema, table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite"]


class LakeError(RuntimeError):
    pass


def _is_spark_df(df: Any) -> bool:
    return type(df).__module__.startswith("pyspark.sql")


class Lake:
    """Delta tables under one root folder: ``<root>/<layer>/<table>``."""

    def __init__(self, root: str | Path, spark: "SparkSession | None" = None, engine: str = "auto"):
        self.root = Path(root)
        self.spark = spark
        if engine == "auto":
            from mmpipeline.spark import has_delta_spark

            engine = "delta-spark" if spark is not None and has_delta_spark(spark) else "delta-rs"
        if engine == "delta-spark" and spark is None:
            raise LakeError("engine delta-spark needs a SparkSession")
        self.engine = engine
        if engine == "delta-spark":
            from mmpipeline.lake import _spark_engine as impl
        else:
            from mmpipeline.lake import _rs_engine as impl
        self._impl = impl

    @classmethod
    def from_config(cls, cfg, spark: "SparkSession | None" = None) -> "Lake":
        return cls(cfg.lake.root, spark=spark, engine=cfg.lake.engine)

    # ------------------------------------------------------------------------------ locations
    def uri(self, name: str) -> str:
        layer, _, tbl = name.partition(".")
        if not tbl:
            raise LakeError(f"table names are 'layer.table', got {name!r}")
        return str(self.root / layer / tbl)

    def exists(self, name: str) -> bool:
        return (Path(self.uri(name)) / "_delta_log").is_dir()

    def _require_spark(self) -> "SparkSession":
        if self.spark is None:
            from mmpipeline.spark import get_spark

            self.spark = get_spark()
        return self.spark

    # ----------------------------------------------------------------------------- reads
    def read(self, name: str, version: int | None = None) -> "DataFrame":
        """The table (optionally at ``version``) as a Spark DataFrame with the registered schema."""
        spark = self._require_spark()
        spec = table(name)
        if not self.exists(name):
            raise LakeError(f"table {name} does not exist yet at {self.uri(name)} (run the stage that writes it first)")
        return self._impl.read_spark(spark, self.uri(name), spec, version)

    def _dataset(self, name: str, version: int | None = None):
        from deltalake import DeltaTable

        if not self.exists(name):
            raise LakeError(f"table {name} does not exist yet at {self.uri(name)} (run the stage that writes it first)")
        return DeltaTable(self.uri(name), version=version).to_pyarrow_dataset()

    def read_arrow(self, name: str, version: int | None = None, columns: list[str] | None = None,
                   filters: Any = None) -> pa.Table:
        """The table as an Arrow table through delta-rs (works for tables of either engine).

        ``filters`` (DNF tuples or a ``pyarrow.dataset`` expression) prune files by their partition
        values and min/max statistics, then select rows **in memory, after** the rows are read in the
        table's own schema. delta-rs' merges write ``string_view`` columns into Parquet while the
        table schema says ``string``; a row filter pushed into such a file's scan fails with
        ``ArrowNotImplementedError ... (string, string_view)``, so no row predicate is ever pushed
        into a Parquet scan here.
        """
        if _filter_expression(filters) is None:
            return _plain_strings(self._dataset(name, version).to_table(columns=columns))
        parts = list(self.iter_arrow(name, version, columns, filters))
        if parts:
            return pa.concat_tables(parts)
        empty = _plain_strings(self._dataset(name, version).schema.empty_table())
        return empty.select(columns) if columns is not None else empty

    def iter_arrow(self, name: str, version: int | None = None, columns: list[str] | None = None,
                   filters: Any = None):
        """:meth:`read_arrow` as a stream of Arrow tables, one per Parquet record batch (filtered the
        same way; empty batches are skipped): a reader holds one batch at a time, not the table."""
        import pyarrow.dataset as pads

        ds = self._dataset(name, version)
        expr = _filter_expression(filters)
        frags = list(ds.get_fragments(filter=expr)) if expr is not None else list(ds.get_fragments())
        # prune: fragments whose partition/statistics guarantee contradicts the filter are skipped
        pruned = pads.FileSystemDataset(frags, ds.schema, ds.format, ds.filesystem)
        need = None
        if columns is not None:
            extra = sorted(_expression_fields(expr, ds.schema.names)) if expr is not None else []
            need = list(dict.fromkeys(list(columns) + extra))
        for batch in pruned.to_batches(columns=need):
            if batch.num_rows:
                part = _plain_strings(pa.Table.from_batches([batch]))
                part = part.filter(expr) if expr is not None else part
                yield part.select(columns) if columns is not None else part

    def read_pandas(self, name: str, version: int | None = None, columns: list[str] | None = None,
                    filters: Any = None) -> "pd.DataFrame":
        return self.read_arrow(name, version, columns, filters).to_pandas()

    def version(self, name: str) -> int | None:
        from deltalake import DeltaTable

        return DeltaTable(self.uri(name)).version() if self.exists(name) else None

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's commits, newest first, each with ``metadata``: the stage's commit metadata as a
        dict, whichever engine wrote it (delta-rs keeps custom keys at the top level of the commit
        info, delta-spark a JSON string under ``userMetadata``)."""
        from deltalake import DeltaTable

        if not self.exists(name):
            return []
        return [normalise_commit(h) for h in DeltaTable(self.uri(name)).history(limit)]

    def count(self, name: str, version: int | None = None, filters: Any = None) -> int:
        """Rows in the table (optionally only those matching ``filters``, see :meth:`read_arrow`)."""
        if not self.exists(name):
            return 0
        expr = _filter_expression(filters)
        if expr is None:
            return self._dataset(name, version).count_rows()
        ds = self._dataset(name, version)
        return self.read_arrow(name, version, columns=sorted(_expression_fields(expr, ds.schema.names))[:1],
                               filters=expr).num_rows

    # ----------------------------------------------------------------------------- writes
    def write(self, name: str, df: Any, mode: WriteMode = "append", partition: dict[str, Any] | None = None,
              metadata: dict[str, Any] | None = None) -> int:
        """Write ``df`` (Spark, pandas or Arrow) as one commit; returns the new table version.

        ``mode="overwrite"`` with ``partition={"run_date": d}`` replaces that partition only; without
        it, the whole table. Columns are conformed to the registered schema first.
        """
        spec = table(name)
        if partition:
            missing = set(partition) - set(spec.partition_by)
            if missing:
                raise LakeError(f"{name}: {sorted(missing)} are not partition columns ({spec.partition_by})")
        if _is_spark_df(df):
            df = conform_spark(df, spec)
            if partition:
                df = _check_partition_spark(df, partition)
            v = self._impl.write_spark(self._require_spark(), self.uri(name), df, spec, mode, partition, metadata)
        else:
            data = conform_arrow(df, spec)
            if partition:
                data = _check_partition_arrow(data, partition)
            v = self._write_arrow(name, data, spec, mode, partition, metadata)
        log.info("lake: %s %s%s -> version %s", mode, name, f" {partition}" if partition else "", v)
        return v

    def _write_arrow(self, name, data: pa.Table, spec, mode, partition, metadata) -> int:
        if self.engine == "delta-spark":
            sdf = self._require_spark().createDataFrame(data.to_pandas(), schema=_spark_schema(spec))
            return self._impl.write_spark(self.spark, self.uri(name), sdf, spec, mode, partition, metadata)
        from mmpipeline.lake import _rs_engine

        return _rs_engine.write_arrow(self.uri(name), data, spec, mode, partition, metadata)

    def merge(self, name: str, df: Any, keys: list[str] | None = None, delete_missing: bool = False,
              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Upsert ``df`` by ``keys`` (default: the table's registered keys) in one commit.

        ``delete_missing=True`` also deletes target rows whose key is absent from ``df`` (a full
        snapshot sync). Creates the table when it does not exist. Returns the merge metrics.
        """
        spec = table(name)
        keys = keys or spec.keys
        if not keys:
            raise LakeError(f"{name} has no key; pass keys=")
        if _is_spark_df(df):
            df = conform_spark(df, spec)
            return self._impl.merge_spark(self._require_spark(), self.uri(name), df, spec, keys, delete_missing, metadata)
        data = conform_arrow(df, spec)
        if self.engine == "delta-spark":
            sdf = self._require_spark().createDataFrame(data.to_pandas(), schema=_spark_schema(spec))
            return self._impl.merge_spark(self.spark, self.uri(name), sdf, spec, keys, delete_missing, metadata)
        from mmpipeline.lake import _rs_engine

        return _rs_engine.merge_arrow(self.uri(name), data, spec, keys, delete_missing, metadata)

    def delete(self, name: str, predicate: str) -> None:
        from deltalake import DeltaTable

        if self.exists(name):
            DeltaTable(self.uri(name)).delete(predicate)

    def restore(self, name: str, version: int) -> int:
        """Make ``version`` the current state again (a new commit; history is kept)."""
        if self.engine == "delta-spark":
            return self._impl.restore(self._require_spark(), self.uri(name), version)
        from deltalake import DeltaTable

        dt = DeltaTable(self.uri(name))
        dt.restore(version)
        return DeltaTable(self.uri(name)).version()


# ---------------------------------------------------------------------------------- reading helpers

# keys delta-rs / Delta writers put in every commit info; anything else at the top level is the
# caller's custom commit metadata (delta-rs' CommitProperties.custom_metadata)
_COMMIT_INFO_KEYS = frozenset({
    "timestamp", "operation", "operationParameters", "readVersion", "isolationLevel", "isBlindAppend",
    "operationMetrics", "engineInfo", "clientVersion", "userMetadata", "version", "txnId", "tags",
    "userId", "userName", "job", "notebook", "clusterId", "inCommitTimestamp", "kernelVersion",
})


def normalise_commit(info: dict[str, Any]) -> dict[str, Any]:
    """A commit-info entry plus ``metadata``: its custom commit metadata as one dict for both engines
    (top-level custom keys from delta-rs, the parsed ``userMetadata`` JSON from delta-spark)."""
    import json

    meta = {k: v for k, v in info.items() if k not in _COMMIT_INFO_KEYS}
    um = info.get("userMetadata")
    if isinstance(um, str) and um.strip():
        try:
            parsed = json.loads(um)
        except ValueError:
            parsed = {"userMetadata": um}
        if isinstance(parsed, dict):
            meta.update(parsed)
    elif isinstance(um, dict):
        meta.update(um)
    return {**info, "metadata": meta}


def _filter_expression(filters: Any):
    """DNF tuples (``[("k", "=", v), ...]``) or a dataset expression -> expression (None: no filter)."""
    if filters is None:
        return None
    import pyarrow.dataset as pads

    if isinstance(filters, pads.Expression):
        return filters
    if not filters:
        return None
    from pyarrow.parquet import filters_to_expression

    return filters_to_expression(filters)


def _expression_fields(expr: Any, names: list[str]) -> set[str]:
    """The table's columns an expression may refer to (a superset: read, then filtered in memory)."""
    import re

    return set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\b", str(expr))) & set(names)


def _plain_strings(t: pa.Table) -> pa.Table:
    """Cast any ``string_view``/``binary_view`` column left by a file's own schema to ``string``/``binary``."""
    fields = []
    changed = False
    for f in t.schema:
        if pa.types.is_string_view(f.type):
            fields.append(f.with_type(pa.string()))
            changed = True
        elif pa.types.is_binary_view(f.type):
            fields.append(f.with_type(pa.binary()))
            changed = True
        else:
            fields.append(f)
    return t.cast(pa.schema(fields, metadata=t.schema.metadata)) if changed else t


# ---------------------------------------------------------------------------------- conforming


def _spark_schema(spec: TableSpec):
    from mmpipeline.schemas import spark_schema

    return spark_schema(spec)


def conform_spark(df: "DataFrame", spec: TableSpec) -> "DataFrame":
    """Select the registered columns in order, cast to their types; missing columns are an error."""
    from pyspark.sql import functions as F

    schema = _spark_schema(spec)
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise LakeError(f"{spec.name}: DataFrame lacks columns {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def conform_arrow(data: Any, spec: TableSpec) -> pa.Table:
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if not isinstance(data, pa.Table):  # pandas
        data = pa.Table.from_pandas(data, preserve_index=False)
    schema = arrow_schema(spec)
    missing = [f.name for f in schema if f.name not in data.column_names]
    if missing:
        raise LakeError(f"{spec.name}: data lacks columns {missing}")
    cols = []
    for f in schema:
        col = data.column(f.name)
        if pa.types.is_timestamp(f.type) and pa.types.is_timestamp(col.type) and col.type.tz is None:
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _check_partition_spark(df: "DataFrame", partition: dict[str, Any]) -> "DataFrame":
    from pyspark.sql import functions as F

    cond = None
    for k, v in partition.items():
        c = ~F.coalesce(F.col(k) == F.lit(v).cast(df.schema[k].dataType), F.lit(False))
        cond = c if cond is None else (cond | c)
    if df.where(cond).limit(1).count():
        raise LakeError(f"rows outside partition {partition} in an overwrite of that partition")
    return df


def _check_partition_arrow(data: pa.Table, partition: dict[str, Any]) -> pa.Table:
    import pyarrow.compute as pc

    for k, v in partition.items():
        col = data.column(k)
        if data.num_rows and not pc.all(pc.equal(col, pa.scalar(v, type=col.type))).as_py():
            raise LakeError(f"rows outside partition {partition} in an overwrite of that partition")
    return data
