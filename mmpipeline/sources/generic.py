"""The generic adapter: CSV / JSON Lines / Parquet mapped onto canonical columns by the config alone.

``columns`` maps each canonical column to a source column name or a Spark SQL expression over the
source columns; ``attributes`` does the same for entries of the ``attributes`` map. Everything is
read as strings: typing happens in the clean stage, so a bad value is quarantined there with a
reason instead of failing the read.

Malformed lines are kept: CSV and JSON are read in ``PERMISSIVE`` mode with a corrupt-record column,
so a line the parser cannot split lands in bronze with ``_corrupt_record`` set (and its text in
``_raw``) and is quarantined by the clean stage.

Demo-size knob (``params``): ``sample_size: N`` keeps the rows whose ``sample_by`` value (a source
column or expression; default the entity's id: ``product_id`` for products, ``query`` otherwise) is
among the N smallest by hash. The selection is deterministic and, with the same ``sample_by`` on
several sources, consistent across them (e.g. sample Home Depot by ``search_term`` so products,
queries and judgments keep the same queries). ``max_products`` / ``max_queries`` are aliases.
``sample_keep: {path: FILE, column: COL}`` also keeps every row whose ``sample_by`` value (compared
case- and space-insensitively) is a value of COL in the CSV FILE -- e.g. the queries spoken in the
voice clips, so the demo subsample still judges them.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpipeline.schemas import ENTITY_COLUMNS
from mmpipeline.sources import CORRUPT_COL

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

    from mmpipeline.config import SourceConfig

log = logging.getLogger(__name__)

_READ_CORRUPT = "__corrupt_record__"  # reader-side name, unlikely to clash with a source column


def _error(msg: str):
    from mmpipeline.context import StageError

    return StageError(msg)


def source_files(path: str) -> list[Path]:
    """The files a source path names (a file, a folder, or a glob)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_")))
    return sorted(Path(f) for f in glob.glob(path) if Path(f).is_file())


def _reader_options(src: "SourceConfig") -> dict[str, str]:
    out = {}
    for k, v in src.options.items():
        out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def read_raw(spark: "SparkSession", src: "SourceConfig", entity: str = "source") -> "DataFrame":
    """The source as received: its own columns (strings) plus ``_corrupt_record`` and ``_source_file``."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if not src.path:
        raise _error(f"sources.{entity}.path is not set")
    if not source_files(src.path):
        raise _error(f"sources.{entity}.path: no input file at {src.path}: fix the path in the config "
                     f"(or --set sources.{entity}.path=...)")
    opts = _reader_options(src)
    if src.format == "csv":
        opts.setdefault("header", "true")
        header = spark.read.options(**opts).csv(src.path)
        names = header.columns
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names]
                              + [T.StructField(_READ_CORRUPT, T.StringType())])
        df = (spark.read.options(**opts).option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", _READ_CORRUPT).schema(schema).csv(src.path))
    elif src.format in ("jsonl", "json"):
        if src.format == "json":
            opts.setdefault("multiLine", "true")
        opts.setdefault("primitivesAsString", "true")
        df = (spark.read.options(**opts).option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", _READ_CORRUPT).json(src.path))
        if _READ_CORRUPT not in df.columns:
            df = df.withColumn(_READ_CORRUPT, F.lit(None).cast("string"))
        names = [c for c in df.columns if c != _READ_CORRUPT]
    elif src.format == "parquet":
        df = spark.read.options(**opts).parquet(src.path).withColumn(_READ_CORRUPT, F.lit(None).cast("string"))
        names = [c for c in df.columns if c != _READ_CORRUPT]
    else:  # pragma: no cover - config validation restricts formats
        raise _error(f"sources.{entity}.format {src.format!r} is not supported")
    df = df.withColumn("_source_file", F.col("_metadata.file_path"))
    return df.select(*[F.col(f"`{n}`") for n in names], F.col(_READ_CORRUPT).alias(CORRUPT_COL), "_source_file")


def resolve(expr: str, source_cols: list[str]) -> "Column":
    """A source column by name (any characters), else a Spark SQL expression."""
    from pyspark.sql import functions as F

    if expr in source_cols:
        return F.col(f"`{expr}`")
    return F.expr(expr)


def map_columns(df: "DataFrame", entity: str, columns: dict[str, str], attributes: dict[str, str] | None = None,
                where: str = "sources") -> "DataFrame":
    """Pure transform: raw source frame -> canonical columns (strings) + ``_raw`` + meta columns.

    ``df`` carries the source columns plus ``_corrupt_record`` and ``_source_file``. Unmapped
    canonical columns are null; ``attributes`` entries with null/empty values are dropped.
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    canon = ENTITY_COLUMNS[entity]
    known = {c for c, _ in canon}
    unknown = set(columns) - known
    if unknown:
        raise _error(f"{where}.{entity}.columns: unknown canonical column(s) {sorted(unknown)}; "
                     f"expected some of {sorted(known)}")
    src_cols = [c for c in df.columns if c not in (CORRUPT_COL, "_source_file", "_row_id")]
    raw = F.when(F.col(CORRUPT_COL).isNotNull(), F.col(CORRUPT_COL)).otherwise(
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in src_cols])) if src_cols else F.lit("{}"))
    out = []
    for name, typ in canon:
        try:
            if name == "attributes":
                if attributes:
                    pairs = []
                    for k, e in attributes.items():
                        pairs += [F.lit(k), resolve(e, src_cols).cast("string")]
                    col = F.map_filter(F.create_map(*pairs), lambda k, v: v.isNotNull() & (F.trim(v) != ""))
                else:
                    col = F.lit(None).cast("map<string,string>")
            elif name in columns:
                col = resolve(columns[name], src_cols).cast("string")
            else:
                col = F.lit(None).cast("string")
            out.append(col.alias(name))
            df.select(col)  # analyse now: a bad mapping fails here with its name
        except AnalysisException as e:
            bad = attributes if name == "attributes" else {name: columns.get(name)}
            raise _error(f"{where}.{entity}: cannot map {bad} onto the source (source columns: {src_cols}): "
                         f"{str(e).splitlines()[0]}") from None
    meta = [F.col("_source_file"),
            (F.col("_row_id") if "_row_id" in df.columns else F.monotonically_increasing_id()).alias("_row_id"),
            raw.alias("_raw"), F.col(CORRUPT_COL)]
    return df.select(*out, *meta)


def _fold(c: "Column") -> "Column":
    from pyspark.sql import functions as F

    return F.lower(F.trim(F.regexp_replace(c.cast("string"), r"\s+", " ")))


def sample_rows(df: "DataFrame", by: "Column", size: int, keep_values: list[str] | None = None) -> "DataFrame":
    """Pure transform: keep rows whose ``by`` value is among the ``size`` smallest distinct values by
    hash (deterministic, consistent across sources), plus rows whose ``by`` value is one of
    ``keep_values`` (case/space-insensitive); corrupt rows are always kept."""
    from pyspark.sql import functions as F

    h = F.xxhash64(by.cast("string"))
    hashes = df.where(by.isNotNull()).select(h.alias("_h")).distinct()
    kth = hashes.orderBy("_h").limit(int(size)).agg(F.max("_h")).first()[0]
    if kth is None:
        return df
    keep = (h <= F.lit(kth)) & by.isNotNull()
    if keep_values:
        folded = sorted({" ".join(str(v).split()).lower() for v in keep_values if str(v).strip()})
        keep = keep | _fold(by).isin(folded)
    if CORRUPT_COL in df.columns:
        keep = keep | F.col(CORRUPT_COL).isNotNull()
    return df.where(keep)


def sample_spec(entity: str, src: "SourceConfig") -> tuple[str, int] | None:
    p = src.params
    size = p.get("sample_size") or (p.get("max_products") if entity == "products" else p.get("max_queries"))
    if not size:
        return None
    by = p.get("sample_by") or src.columns.get("product_id" if entity == "products" else "query")
    if not by:
        raise _error(f"sources.{entity}.params.sample_size needs params.sample_by (no id column mapped)")
    return by, int(size)


def _sample_keep_values(entity: str, src: "SourceConfig") -> list[str]:
    spec = src.params.get("sample_keep")
    if not spec:
        return []
    import csv

    if not isinstance(spec, dict) or not spec.get("path") or not spec.get("column"):
        raise _error(f"sources.{entity}.params.sample_keep must be {{path: FILE, column: COL}}, got {spec!r}")
    path = Path(str(spec["path"]))
    if not path.is_file():
        raise _error(f"sources.{entity}.params.sample_keep.path: no file at {path}")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if rows and spec["column"] not in rows[0]:
        raise _error(f"sources.{entity}.params.sample_keep.column {spec['column']!r} not in {path} "
                     f"(columns: {list(rows[0])})")
    return [r[spec["column"]] for r in rows if r.get(spec["column"])]


def read(spark: "SparkSession", entity: str, src: "SourceConfig", upstream: dict[str, Any] | None = None) -> "DataFrame":
    """Read a file source and map it onto the entity's canonical columns (see module doc)."""
    from pyspark.sql import functions as F

    raw = read_raw(spark, src, entity)
    raw = raw.withColumn("_row_id", F.monotonically_increasing_id())
    spec = sample_spec(entity, src)
    if spec:
        by, size = spec
        src_cols = [c for c in raw.columns if c not in (CORRUPT_COL, "_source_file", "_row_id")]
        keep = _sample_keep_values(entity, src)
        raw = sample_rows(raw, resolve(by, src_cols), size, keep)
        log.info("sources.%s: demo sample of %d distinct %s values%s", entity, size, by,
                 f" (+ up to {len(keep)} kept from sample_keep)" if keep else "")
    return map_columns(raw, entity, src.columns, src.attributes)


def count_source_records(src: "SourceConfig", entity: str) -> int | None:
    """Records in the source files, counted without Spark (for the ingest accounting), or None when
    the format gives no independent count (a JSON document, a UTF-16 file, a sampled source).

    CSV: non-blank lines minus one header per file; with ``multiLine`` the records of Python's csv
    module (same ``sep``/``quote``/``escape``). JSON Lines: non-blank lines. Parquet: the footers' row
    counts.
    """
    import csv

    if not src.path or src.adapter != "generic" or sample_spec(entity, src) is not None:
        return None
    files = source_files(src.path)
    opts = {k.lower(): v for k, v in _reader_options(src).items()}
    enc = str(opts.get("encoding", opts.get("charset", "utf-8"))).lower().replace("_", "-")
    if enc.startswith(("utf-16", "utf-32")) or any(f.suffix in (".gz", ".bz2", ".zip", ".zst") for f in files):
        return None
    if src.format == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in files)
    if src.format == "json":
        return None
    header = src.format == "csv" and opts.get("header", "true") == "true"
    comment = opts.get("comment")
    total = 0
    for f in files:
        if src.format == "csv" and opts.get("multiline", "false") == "true":
            sep, quote = opts.get("sep", opts.get("delimiter", ",")), opts.get("quote", '"')
            escape = opts.get("escape", "\\")
            kw: dict[str, Any] = {"delimiter": sep, "quotechar": quote or None}
            if escape == quote:
                kw["doublequote"] = True
            else:
                kw.update(escapechar=escape, doublequote=False)
            try:
                with open(f, newline="", encoding=enc, errors="replace") as fh:
                    n = sum(1 for r in csv.reader(fh, **kw) if r and not (comment and r[0].startswith(comment)))
            except (csv.Error, LookupError):
                return None
        else:
            n = 0
            with open(f, "rb") as fh:
                c = comment.encode() if comment else None
                for line in fh:
                    s = line.strip()
                    if s and not (c and s.startswith(c)):
                        n += 1
        total += max(0, n - 1) if header else n
    return total
