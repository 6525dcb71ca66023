"""Clean stage, voice part: ``bronze.voice_queries`` -> ``silver.voice_queries`` + ``quarantine.voice_queries``.

Row checks first (malformed line, no audio reference, repeated id), then every remaining clip is
checked on the executors (``mapInPandas``, :func:`mmpipeline.voice.audio.check_clip`): under the
audio root, readable, decodes, duration within ``voice.min/max_duration_s``, not silent, sample rate
and channels known. A failing clip becomes one quarantine row with its reason code and a readable
detail; the run goes on. The query id is the source's id (``columns.query_id``), else a hash of the
audio reference. ``query`` keeps the spoken words when the source has them (a reference transcript,
used by ``bench voice``); the search itself uses the recognised text (``gold.voice_transcripts``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame

    from mmpipeline.config import VoiceConfig

log = logging.getLogger(__name__)

CLIP_RESULT_COLUMNS = [
    ("query_id", "string"), ("audio_path", "string"), ("audio_status", "string"), ("audio_detail", "string"),
    ("audio_hash", "string"), ("sample_rate", "int"), ("channels", "int"), ("duration_s", "double"),
    ("audio_format", "string"),
]


def check_clips_pandas(pdf: "pd.DataFrame", root: str, v: "VoiceConfig") -> "pd.DataFrame":
    import pandas as pd

    from mmpipeline.voice.audio import check_clip

    res = [check_clip(root, ref, max_bytes=v.max_bytes, min_duration_s=v.min_duration_s,
                      max_duration_s=v.max_duration_s, silence_dbfs=v.silence_dbfs) for ref in pdf["audio_ref"]]
    cols = [c for c, _ in CLIP_RESULT_COLUMNS[1:]]
    out = pd.DataFrame(res, index=pdf.index)[cols] if res else pd.DataFrame(columns=cols)
    out.insert(0, "query_id", pdf["query_id"].values)
    for c in ("sample_rate", "channels"):
        out[c] = out[c].astype("Int32")
    out["duration_s"] = out["duration_s"].astype("float64")
    return out


def check_clips(df: "DataFrame", root: str, v: "VoiceConfig", partitions: int | None = None) -> "DataFrame":
    """Spark: :func:`check_clip` on the executors for every (query_id, audio_ref) row."""
    from mmpipeline.schemas import spark_schema

    schema = spark_schema(CLIP_RESULT_COLUMNS)
    vc = v.model_copy()

    def _apply(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        for pdf in batches:
            yield check_clips_pandas(pdf, root, vc)

    src = df.select("query_id", "audio_ref")
    if partitions:
        src = src.repartition(partitions, "query_id")
    return src.mapInPandas(_apply, schema=schema)


def tag_voice_queries(bronze: "DataFrame") -> "DataFrame":
    """Row-level checks: malformed line, no audio reference, repeated id (first row wins)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from mmpipeline.clean import transforms as T

    audio = T._blank_to_null(F.col("audio_ref"))
    qid = F.coalesce(T._blank_to_null(F.col("query_id")), F.substring(F.sha2(audio, 256), 1, 16))
    df = bronze.select(qid.alias("query_id"), T.clean_text_col("query").alias("query"),
                       T.normalize_query_col("query").alias("query_norm"), audio.alias("audio_ref"),
                       F.col("frequency").try_cast("double").alias("_freq"), *T._meta_cols(bronze))
    w = Window.partitionBy("query_id").orderBy("_row_id")
    df = df.withColumn("_rn", F.row_number().over(w))
    reason, detail = T._reason_chain([
        (F.col("_corrupt_record").isNotNull(), "malformed_record", "the reader could not parse this line"),
        (F.col("audio_ref").isNull(), "no_audio_ref", "the row names no audio file (columns.audio_ref)"),
        (F.col("_rn") > 1, "duplicate_id", F.concat(F.lit("voice query id "), F.col("query_id"),
                                                    F.lit(" already seen earlier in the batch"))),
        (F.col("_freq") < 0, "negative_frequency", F.concat(F.lit("frequency "), F.col("_freq").cast("string"))),
    ])
    return df.withColumn("_reason", reason).withColumn("_detail", detail).drop("_rn")


def run_voice_clean(ctx, lake, src, bronze: "DataFrame", write_snapshot: Callable, write_partition: Callable,
                    account: Callable, cached: list) -> dict[str, Any]:
    """The voice block of the clean stage (``mmpipeline.clean.stage.run`` passes its writers and accounting)."""
    from pyspark.sql import functions as F

    from mmpipeline.clean import transforms as T

    v = ctx.cfg.voice
    d = ctx.run_date
    root = src.audio_root or (os.path.dirname(src.path) if src.path else None)
    if root is None:
        from mmpipeline.context import StageError

        raise StageError("sources.voice_queries: set audio_root (or path) so audio references can be resolved")
    tagged = tag_voice_queries(bronze).cache()
    cached.append(tagged)
    spark = ctx.spark
    parts = v.check_partitions or max(2, spark.sparkContext.defaultParallelism)
    checks = check_clips(tagged.where(F.col("_reason").isNull()), root, v, partitions=parts).cache()
    cached.append(checks)
    full = (tagged.join(checks, "query_id", "left")
            .withColumn("_reason", F.coalesce(F.col("_reason"), F.when(F.col("audio_status") != "ok",
                                                                       F.col("audio_status"))))
            .withColumn("_detail", F.coalesce(F.col("_detail"), F.when(F.col("audio_status") != "ok",
                                                                       F.col("audio_detail")))))
    full = full.withColumn("_outcome", F.when(F.col("_reason").isNotNull(), F.lit(T.QUARANTINED))
                           .otherwise(F.lit(T.KEPT))).cache()
    cached.append(full)
    counts = T.outcome_counts(full)
    silver = full.where(F.col("_outcome") == T.KEPT).select(
        "query_id", "query", "query_norm", "audio_ref",
        F.coalesce(F.col("_freq"), F.lit(1.0)).cast("long").alias("frequency"),
        F.col("audio_hash").alias("text_hash"), F.lit(d).cast("date").alias("run_date"),
        "audio_path", "audio_hash", "audio_format", "sample_rate", "channels", "duration_s")
    merge = write_snapshot(ctx, lake, "silver.voice_queries", silver, ["query_id"])
    write_partition(ctx, lake, "quarantine.voice_queries", T.quarantine_rows(full, "audio_ref", d))
    clip_stats = {r["audio_status"]: r["count"] for r in checks.groupBy("audio_status").count().collect()}
    account("voice_queries", "silver.voice_queries", counts, {"merge": merge, "clips": clip_stats, "audio_root": root})
    return counts
