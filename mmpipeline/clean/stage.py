"""Clean stage: ``bronze.*`` (this run date) -> ``silver.*`` + ``quarantine.*`` + row accounting.

Per entity the pure transforms in :mod:`mmpipeline.clean.transforms` type, normalise, validate and
de-duplicate the bronze rows; this module only reads and writes at the edge:

* ``silver.products`` / ``silver.queries`` / ``silver.judgments`` / ``silver.voice_queries``: merged
  by key as a snapshot of this run (rows absent from the run are deleted; unchanged rows are not
  rewritten and keep the run date their content last changed);
* ``silver.interactions``: the run date's partition, overwritten;
* ``quarantine.<entity>`` and ``quarantine.images``: the run date's partition, overwritten;
* ``ops.row_accounting``: rows in = kept + quarantined per table, printed at the end (kept includes
  identical repeats folded into one silver row, and query rows aggregated into one query).

Image references are checked in parallel on the executors; a product whose image fails is kept
text-only (``image_status`` says why) with a row in ``quarantine.images``.
Re-running a run date leaves every table's contents unchanged.

The run is a transaction as far as a person can tell: every output is computed and checked first,
then written. Refused before the first commit (nothing written):

* rows lost: per source, bronze rows of the run date (counted from the lake, independently of the
  transforms) != kept + folded + quarantined;
* an empty source (no bronze rows) unless ``clean.allow_empty_source`` (``--allow-empty-source``);
* the deletion guard: a snapshot merge would delete more than ``clean.max_delete_share`` of a silver
  table (a truncated or misread export);
* a misread export: more than ``clean.max_quarantine_share`` of a source's rows quarantined.

After the merges the silver row counts are reconciled with the merge metrics (rows before +
inserted - deleted = rows after = the run's snapshot rows); a difference fails the stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from mmpipeline.context import RunContext, StageError

log = logging.getLogger(__name__)


class _Steps:
    """Wall seconds per step of the stage (logged, and returned as ``seconds_per_step``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(self.seconds.get(step, 0.0) + now - self._t, 2)
        log.debug("clean step %s: %.2fs", step, now - self._t)
        self._t = now


def materialize(df):
    """Compute ``df`` once for the whole run and cut its lineage (a local checkpoint, memory then
    disk): every later action (counts, silver, quarantine, the merges) reads the stored rows, and
    plans built on it stay small instead of re-analysing the whole tagging plan each time."""
    from pyspark import StorageLevel

    return df.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)


def release(df) -> None:
    """Free what :func:`materialize` (or ``cache``) stored for ``df``."""
    df.unpersist()
    try:  # a local checkpoint: the blocks belong to the RDD under the plan's LogicalRDD
        plan = df._jdf.queryExecution().analyzed()
        if plan.getClass().getSimpleName() == "LogicalRDD":
            plan.rdd().unpersist(False)
    except Exception:  # noqa: BLE001 - Spark Connect or another plan: nothing more to free
        pass


@contextlib.contextmanager
def _sql_conf(spark, conf: dict[str, str]):
    """Set session SQL confs for the plans executed inside the block, then put them back."""
    old = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


_RAW_KEYS = ["_row_id", "_batch_id"]
# quarantined rows' keys broadcast to the bronze scan that fetches their raw records, up to this many
_RAW_BROADCAST_ROWS = 2_000_000


def _has_raw(bronze) -> bool:
    """``bronze`` carries raw records and the keys that find them again."""
    return "_raw" in bronze.columns and set(_RAW_KEYS) <= set(bronze.columns)


def tag_once(tag, bronze, *args, cached: list):
    """``materialize(tag(bronze, *args, store=...))``: the cleaned columns are stored once before
    the split into JVM rows and UDF rows (bronze read once), and freed as soon as the tagged frame
    is stored. The tagged frame is added to ``cached``.

    The raw record text (``_raw``, the widest column: 215 MB of a 1M-product export against 64 MB of
    titles) is left out of the tagged frame (null there): only quarantined rows need it, and
    :func:`quarantined_with_raw` fetches theirs from bronze, instead of every row carrying it through both stored
    frames and the de-duplication shuffle."""
    if _has_raw(bronze):
        bronze = bronze.drop("_raw")
    pre: list = []

    def store(df):
        # the regex projection of every text column is one method far beyond the JVM's 64 KB limit:
        # whole-stage codegen would spend seconds compiling it only to fail and fall back to the
        # per-expression code (small methods the JIT compiles), so that plan goes there directly
        with _sql_conf(df.sparkSession, {"spark.sql.codegen.wholeStage": "false"}):
            pre.append(materialize(df))
        cached.append(pre[-1])
        return pre[-1]

    # the tagging plan on top of the stored frame (hashes, JSON, window, the UDF split) is also large:
    # per-expression code (small methods HotSpot JIT-compiles) measured 12.6 s of JVM CPU at 100k
    # products vs 23.1 s with whole-stage code capped at HotSpot's 8,000-byte JIT limit
    with _sql_conf(bronze.sparkSession, {"spark.sql.codegen.wholeStage": "false"}):
        tagged = materialize(tag(bronze, *args, store=store))
    cached.append(tagged)
    for df in pre:
        release(df)
    cached[:] = [df for df in cached if all(df is not p for p in pre)]
    return tagged


def quarantined_with_raw(tagged, bronze, counts: dict[str, Any]):
    """The quarantined rows of ``tagged`` (a :func:`tag_once` frame of ``bronze``, whose ``_raw`` it
    left out; ``counts`` its :func:`~mmpipeline.clean.transforms.outcome_counts`) with their raw record
    text from ``bronze``, matched by batch and row id. The keys of these few rows are broadcast to the
    bronze scan (no shuffle of the export), and every row is kept exactly once (a left join on one
    record per key)."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import transforms as T

    rows = tagged.where(F.col("_outcome") == T.QUARANTINED)
    if not _has_raw(bronze):
        return rows
    keys = rows.select(*_RAW_KEYS)
    if int(counts[T.QUARANTINED]) <= _RAW_BROADCAST_ROWS:
        keys = F.broadcast(keys)
    raw = (bronze.select(*_RAW_KEYS, "_raw").join(keys, _RAW_KEYS, "left_semi")
           .groupBy(*_RAW_KEYS).agg(F.first("_raw").alias("_raw")))
    return rows.drop("_raw").join(raw, _RAW_KEYS, "left")


def _bronze(ctx: RunContext, lake, entity: str):
    from pyspark.sql import functions as F

    name = f"bronze.{entity}"
    if not lake.exists(name):
        raise StageError(f"{name} does not exist: run `mmpipeline run ingest` for {ctx.run_date} first")
    df = lake.read(name).where(F.col("run_date") == F.lit(ctx.run_date))
    return df


def _old(lake, name: str):
    return lake.read(name) if lake.exists(name) else None


def _plan(ctx: RunContext) -> list[dict[str, Any]]:
    """The run's pending writes (executed only after every check passed, see :func:`_execute`)."""
    plan = ctx.__dict__.get("_clean_plan")
    if plan is None:
        plan = ctx.__dict__["_clean_plan"] = []
    return plan


def _write_snapshot(ctx: RunContext, lake, name: str, df, keys: list[str]) -> dict[str, Any]:
    """Plan a snapshot merge of ``df`` into ``name`` (rows absent from ``df`` get deleted) and count,
    before anything is written, what it would delete. Returns the plan entry (its ``merge`` metrics
    are filled in when the plan is executed)."""
    from pyspark.sql import functions as F

    from mmpipeline.clean.transforms import carry_unchanged
    from mmpipeline.lake import conform_spark
    from mmpipeline.schemas import table

    spec = table(name)
    df = conform_spark(df, spec)
    old = _old(lake, name)
    df = materialize(carry_unchanged(df, old, keys))
    rows = df.count()
    before = lake.count(name) if old is not None else 0
    deleted = 0
    if old is not None and before:
        deleted = old.select(*keys).join(df.select(*keys).where(
            F.coalesce(*[F.col(k).isNotNull() for k in keys])), keys, "left_anti").count()
    entry = {"kind": "snapshot", "name": name, "df": df, "keys": keys, "rows": rows, "before": before,
             "deletes": deleted, "merge": {}}
    _plan(ctx).append(entry)
    if rows or ctx.cfg.clean.allow_empty_source:  # an empty source gets its own message (_check_counts)
        _guard_delete(ctx, entry)  # refuse as early as possible, with the table that would lose rows named
    return entry["merge"]


def _write_partition(ctx: RunContext, lake, name: str, df) -> None:
    _plan(ctx).append({"kind": "partition", "name": name, "df": df})


def _guard_deletes(ctx: RunContext) -> None:
    """The deletion guard: refuse a snapshot merge that deletes too much of a silver table."""
    for e in _plan(ctx):
        _guard_delete(ctx, e)


def _guard_delete(ctx: RunContext, e: dict[str, Any]) -> None:
    c = ctx.cfg.clean
    if e["kind"] == "snapshot" and e["before"]:
        share = e["deletes"] / e["before"]
        if share > c.max_delete_share:
            raise StageError(
                f"clean refused for {ctx.run_date}: {e['name']} would lose {e['deletes']:,} of its {e['before']:,} rows "
                f"({share:.1%}; allowed <= {c.max_delete_share:.0%}) because they are missing from this run's source: "
                f"a truncated or misread export? Nothing was written. If the deletions are real, re-run with "
                f"--set clean.max_delete_share={min(1.0, round(share + 0.005, 2))}")


def _execute(ctx: RunContext, lake, hook) -> None:
    meta = {"stage": "clean", "run_date": str(ctx.run_date)}
    step = ctx.__dict__.get("_clean_steps")
    for e in _plan(ctx):
        if e["kind"] == "snapshot":
            m = lake.merge(e["name"], e["df"], keys=e["keys"], delete_missing=True, metadata=meta)
            e["merge"].update({k: v for k, v in m.items() if k.startswith(("num_target", "numTarget")) or k == "created"})
            log.info("clean: %s merged (inserted %s, updated %s, deleted %s)", e["name"], _metric(m, "inserted"),
                     _metric(m, "updated"), _metric(m, "deleted"))
            what = "merge"
        elif e["kind"] == "table":  # a whole-table overwrite (ops.image_checks: last run's image verdicts)
            lake.write(e["name"], e["df"], mode="overwrite", metadata=meta)
            what = "write"
        else:
            lake.write(e["name"], e["df"], mode="overwrite", partition={"run_date": ctx.run_date}, metadata=meta)
            what = "write"
        if step is not None:
            step(f"{what} {e['name']}")
        hook(f"after-{e['name']}")


def _metric(m: dict[str, Any], what: str) -> int | None:
    """A merge metric under either engine's name (delta-rs num_target_rows_x, delta-spark numTargetRowsX)."""
    for k in (f"num_target_rows_{what}", f"numTargetRows{what.capitalize()}"):
        if m.get(k) is not None:
            return int(m[k])
    return None


def _reconcile_merges(ctx: RunContext, lake) -> list:
    """After the merges: rows before + inserted - deleted == rows after == the snapshot's rows."""
    from mmpipeline.ops import Accounting

    out, bad = [], []
    for e in _plan(ctx):
        if e["kind"] != "snapshot":
            continue
        m, after = e["merge"], lake.count(e["name"])
        ins, dele = _metric(m, "inserted"), _metric(m, "deleted")
        if m.get("created") and ins is None:
            ins, dele = after, 0
        expected = e["before"] + (ins or 0) - (dele or 0)
        out.append(Accounting(f"{e['name']} (merge)", e["rows"], after, 0))
        if after != e["rows"] or expected != after or (dele is not None and dele != e["deletes"]):
            bad.append(f"{e['name']}: {e['rows']:,} snapshot rows, {after:,} rows after the merge, "
                       f"{e['before']:,} before + {ins} inserted - {dele} deleted = {expected:,} "
                       f"(planned deletes {e['deletes']:,})")
    if bad:
        from mmpipeline.ops import record_accounting

        record_accounting(ctx, "clean", out)
        raise StageError("silver row counts do not reconcile with the merge metrics: " + "; ".join(bad))
    return out


def _malformed_hint(entity: str, src) -> str:
    """The quarantine detail of a record the reader could not parse: which reader option to look at."""
    key = f"sources.{entity}.options"
    opts = {k.lower(): v for k, v in (src.options or {}).items()}
    if src.format == "csv":
        multi = str(opts.get("multiline", "false")).lower() == "true"
        first = (f"fields with line breaks need {key}.multiLine: true" if not multi
                 else "multiLine is on: an unclosed or unescaped quote swallows the records after it")
        return (f"the CSV reader could not split this record into the header's columns: {first}; "
                f"check {key}.quote / {key}.escape (e.g. escape: '\"' for doubled quotes) and {key}.sep")
    if src.format == "jsonl":
        return (f"not one JSON object per line: for a JSON array or pretty-printed objects set "
                f"sources.{entity}.format: json (or {key}.multiLine: true)")
    return f"the {src.format} reader could not parse this record: check {key}"


def _quarantine(ctx: RunContext, tagged, key, entity: str, bronze, counts: dict[str, Any]):
    """Quarantine rows of ``tagged`` (with their raw records from ``bronze``, see :func:`quarantined_with_raw`),
    with the reader hint for records that could not be parsed."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import transforms as T

    q = T.quarantine_rows(quarantined_with_raw(tagged, bronze, counts), key, ctx.run_date)
    src = ctx.cfg.sources.get(entity)
    if src is None or src.adapter != "generic":
        return q
    return q.withColumn("detail", F.when(F.col("reason") == "malformed_record", F.lit(_malformed_hint(entity, src)))
                        .otherwise(F.col("detail")))


def _check_counts(ctx: RunContext, lake, entity: str, counts: dict[str, Any]) -> int:
    """Rows in, counted from bronze independently of the transforms; refuse lost rows, an empty
    source and a misread export before anything is written. Returns the bronze row count."""
    from mmpipeline.clean import transforms as T

    c = ctx.cfg.clean
    name = f"bronze.{entity}"
    n = lake.count(name, filters=[("run_date", "=", ctx.run_date)])
    tagged_n = int(counts[T.KEPT]) + int(counts[T.FOLDED]) + int(counts[T.QUARANTINED])
    if n != tagged_n:
        what = "rows lost" if tagged_n < n else "rows duplicated"
        raise StageError(f"clean refused for {ctx.run_date}: {what} in {entity}: {name} holds {n:,} rows for the run "
                         f"date but the clean transforms accounted for {tagged_n:,} (kept {counts[T.KEPT]:,} + folded "
                         f"{counts[T.FOLDED]:,} + quarantined {counts[T.QUARANTINED]:,}). Nothing was written.")
    if n == 0 and not c.allow_empty_source:
        src = ctx.cfg.sources.get(entity)
        where = f" ({src.path})" if src is not None and src.path else ""
        raise StageError(f"clean refused for {ctx.run_date}: source {entity}{where} has no records; an empty export "
                         f"would empty silver.{entity}. Nothing was written. If it really is empty, re-run clean with "
                         f"--allow-empty-source (or --set clean.allow_empty_source=true)")
    q = int(counts[T.QUARANTINED])
    if n and q / n > c.max_quarantine_share:
        top = sorted(counts["reasons"].items(), key=lambda kv: -kv[1])[:3]
        hint = ""
        if counts["reasons"].get("malformed_record") and ctx.cfg.sources.get(entity) is not None:
            hint = f" Likely a misread export: {_malformed_hint(entity, ctx.cfg.sources[entity])}."
        raise StageError(
            f"clean stopped for {ctx.run_date} (critical): {q:,} of {n:,} {entity} rows quarantined ({q / n:.1%}; "
            f"allowed <= {c.max_quarantine_share:.0%}; reasons {', '.join(f'{r} {k:,}' for r, k in top)}).{hint} "
            f"Nothing was written; fix the source or its reader options "
            f"(or raise clean.max_quarantine_share if this share is expected)")
    return n


def run(ctx: RunContext) -> dict[str, Any]:
    cached: list = []
    ctx.__dict__["_clean_plan"] = []
    try:
        return _run(ctx, cached)
    finally:  # the run's stored frames are freed whether it wrote or was refused
        for df in cached + [e["df"] for e in _plan(ctx)]:
            release(df)


def _run(ctx: RunContext, cached: list) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from mmpipeline.clean import transforms as T
    from mmpipeline.clean.images import check_images, image_record
    from mmpipeline.cli import fault_point
    from mmpipeline.ops import Accounting, print_table, record_accounting

    cfg, c, d = ctx.cfg, ctx.cfg.clean, ctx.run_date
    ctx.__dict__["_clean_plan"] = []
    if not cfg.sources:
        raise StageError(f"no sources configured in {cfg.config_path}")
    lake = ctx.spark_lake()
    spark = ctx.spark
    acc: list[Accounting] = []
    reasons_rows: list[list[Any]] = []
    summary: dict[str, Any] = {}

    def account(entity: str, table_name: str, counts: dict[str, Any], extra: dict[str, Any] | None = None):
        kept = int(counts[T.KEPT]) + int(counts[T.FOLDED])
        counts["in"] = _check_counts(ctx, lake, entity, counts)  # bronze rows, counted independently
        acc.append(Accounting(table_name, int(counts["in"]), kept, int(counts[T.QUARANTINED])))
        for reason, n in sorted(counts["reasons"].items(), key=lambda kv: -kv[1]):
            reasons_rows.append([f"quarantine.{entity}", reason, n])
        summary[entity] = {"rows_in": counts["in"], "silver_rows": counts[T.KEPT], "folded": counts[T.FOLDED],
                           "quarantined": counts[T.QUARANTINED], "reasons": counts["reasons"], **(extra or {})}
        log.info("clean %s: %d in -> %d silver rows (+%d folded) + %d quarantined %s", entity, counts["in"],
                 counts[T.KEPT], counts[T.FOLDED], counts[T.QUARANTINED], counts["reasons"] or "")

    product_ids = None
    t0 = time.perf_counter()
    step = ctx.__dict__["_clean_steps"] = _Steps()
    # ------------------------------------------------------------------------------ products
    if "products" in cfg.sources:
        src = cfg.sources["products"]
        bronze = _bronze(ctx, lake, "products")
        tagged = tag_once(T.tag_products, bronze, c, cached=cached)
        counts = T.outcome_counts(tagged)
        step("products: tag + counts")
        products = T.products_silver(tagged)
        root = src.image_root or (os.path.dirname(src.path) if src.path else None)
        checks = None
        img_counts: dict[str, int] = {}
        refs = products.where(F.col("image_ref").isNotNull())
        if root is not None:
            parts = c.image_partitions or max(2, spark.sparkContext.defaultParallelism)
            prev = lake.read("ops.image_checks") if lake.exists("ops.image_checks") else None
            checks = materialize(check_images(refs, root, c.image, partitions=parts, previous=prev))
            cached.append(checks)
            _plan(ctx).append({"kind": "table", "name": "ops.image_checks", "df": image_record(checks)})
            img_counts = {r["image_status"]: r["count"] for r in checks.groupBy("image_status").count().collect()}
            log.info("clean images: %s (root %s)", img_counts, root)
            step("products: image checks")
        silver = T.attach_images(products, checks).withColumn("run_date", F.lit(d).cast("date"))
        merge = _write_snapshot(ctx, lake, "silver.products", silver, ["product_id"])
        step("products: snapshot plan")
        _write_partition(ctx, lake, "quarantine.products", _quarantine(ctx, tagged, "product_id", "products", bronze, counts))
        if checks is not None:
            _write_partition(ctx, lake, "quarantine.images", T.image_quarantine(checks, d))
        else:
            _write_partition(ctx, lake, "quarantine.images", spark.createDataFrame(
                [], "run_date date, product_id string, image_ref string, reason string, detail string"))
        account("products", "silver.products", counts, {"images": img_counts, "merge": merge})
        step("products: accounting")
        n_refs = sum(img_counts.values())
        n_ok = img_counts.get("ok", 0)
        if n_refs:  # image references checked: ok vs failed (the products themselves are kept)
            acc.append(Accounting("silver.products:images", n_refs, n_ok, n_refs - n_ok))
        for status, n in sorted(img_counts.items()):
            if status not in ("ok", "none"):
                reasons_rows.append(["quarantine.images", status, n])
        product_ids = tagged.where(F.col("_outcome") == T.KEPT).select("product_id")
    elif lake.exists("silver.products"):
        product_ids = lake.read("silver.products").select("product_id")

    # ------------------------------------------------------------------------ judgments / interactions
    derived_from = []
    if "judgments" in cfg.sources:
        src = cfg.sources["judgments"]
        bronze = _bronze(ctx, lake, "judgments")
        tagged = tag_once(T.tag_judgments, bronze, c, product_ids, cached=cached)
        counts = T.outcome_counts(tagged)
        label = str(src.params.get("label") or (src.adapter if src.adapter != "generic" else cfg.name))
        silver = T.judgments_silver(tagged, label).withColumn("run_date", F.lit(d).cast("date"))
        merge = _write_snapshot(ctx, lake, "silver.judgments", silver, ["query_id", "product_id"])
        _write_partition(ctx, lake, "quarantine.judgments", _quarantine(ctx, tagged, ["_query_text", "product_id"], "judgments", bronze, counts))
        account("judgments", "silver.judgments", counts, {"merge": merge})
        step("judgments")
        derived_from.append(tagged.where(F.col("_outcome") == T.KEPT))
    if "interactions" in cfg.sources:
        bronze = _bronze(ctx, lake, "interactions")
        tagged = tag_once(T.tag_interactions, bronze, product_ids, cached=cached)
        counts = T.outcome_counts(tagged)
        silver = T.interactions_silver(tagged).withColumn("run_date", F.lit(d).cast("date"))
        _write_partition(ctx, lake, "silver.interactions", silver)
        _write_partition(ctx, lake, "quarantine.interactions", _quarantine(ctx, tagged, "session_id", "interactions", bronze, counts))
        account("interactions", "silver.interactions", counts)
        step("interactions")
        derived_from.append(tagged.where(F.col("_outcome") == T.KEPT))

    # ---------------------------------------------------------------------------------- queries
    queries = None
    if "queries" in cfg.sources:
        bronze = _bronze(ctx, lake, "queries")
        tagged = tag_once(T.tag_queries, bronze, cached=cached)
        counts = T.outcome_counts(tagged)
        queries = T.queries_silver(tagged)
        _write_partition(ctx, lake, "quarantine.queries", _quarantine(ctx, tagged, "query", "queries", bronze, counts))
        account("queries", "silver.queries", counts)
        step("queries")
    extra = T.derived_queries(queries, *derived_from)
    if queries is not None or extra is not None:
        allq = queries if extra is None else (extra if queries is None else queries.unionByName(extra))
        allq = materialize(allq.withColumn("run_date", F.lit(d).cast("date")))
        cached.append(allq)
        n_q = allq.count()
        merge = _write_snapshot(ctx, lake, "silver.queries", allq, ["query_id"])
        summary.setdefault("queries", {}).update({"silver_rows": n_q, "merge": merge})
        log.info("clean queries: %d distinct queries in silver.queries", n_q)
        step("queries: snapshot plan")
    if "voice_queries" in cfg.sources:  # clip checks on the executors: mmpipeline.voice.clean
        from mmpipeline.voice.clean import run_voice_clean

        run_voice_clean(ctx, lake, cfg.sources["voice_queries"], _bronze(ctx, lake, "voice_queries"),
                        _write_snapshot, _write_partition, account, cached)

    # every output is computed and checked: refuse before the first commit, or write them all
    _guard_deletes(ctx)
    if reasons_rows:
        print_table(f"clean: quarantine reasons for {d}", ["table", "reason", "rows"], reasons_rows)
    step("voice + guards")
    fault_point("clean", "before-write")
    _execute(ctx, lake, lambda point: fault_point("clean", point))
    acc += _reconcile_merges(ctx, lake)
    step("reconcile")
    record_accounting(ctx, "clean", acc)
    step("accounting")
    summary["seconds_total"] = round(time.perf_counter() - t0, 2)
    log.info("clean: seconds per step %s", step.seconds)
    return {"tables": summary, "seconds_per_step": step.seconds}
