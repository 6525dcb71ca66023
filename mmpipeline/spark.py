"""SparkSession construction from the config (local mode by default)."""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from mmpipeline.config import Config

log = logging.getLogger(__name__)

_DEFAULT_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.default.parallelism": "4",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.ansi.enabled": "false",
}


def get_spark(cfg: Config | None = None) -> SparkSession:
    """Return the active session or build one from ``cfg.spark``.

    Under ``spark-submit`` the master and conf given on the command line win; in-process (CLI,
    tests) the config's master is used. The Python workers use the driver's interpreter.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.spark.app_name if cfg else "mmpipeline")
    # under spark-submit the JVM already exists (PYSPARK_GATEWAY_PORT) and --master/--conf win
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        builder = builder.master(cfg.spark.master if cfg else "local[2]")
    conf = dict(_DEFAULT_CONF)
    if cfg:
        conf.update(cfg.spark.conf)
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s master=%s delta-spark=%s", spark.version, spark.sparkContext.master, has_delta_spark(spark))
    return spark


def has_delta_spark(spark: SparkSession) -> bool:
    """True when the Delta Lake jars are on Spark's classpath (cluster or Docker image)."""
    try:
        spark.sparkContext._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")  # type: ignore[union-attr]
        return True
    except Exception:
        return False
