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


def is_local_master(master: str | None) -> bool:
    """``local``, ``local[N]``, ``local[*]``, ``local[N,F]``: driver and executors in one JVM."""
    return bool(master) and (master == "local" or master.startswith("local["))


def session_conf(cfg: Config | None, master: str | None) -> dict[str, str]:
    """The Spark conf a session is built with: defaults, then loopback binds in local mode, then the
    config's ``spark.conf`` (which wins, e.g. to expose a local driver on purpose).

    In local mode nothing outside the machine needs to reach the driver, so it binds to 127.0.0.1
    instead of the host's network address (Spark's default listens on every interface).
    """
    conf = dict(_DEFAULT_CONF)
    if is_local_master(master):
        conf.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    if cfg:
        conf.update(cfg.spark.conf)
    return conf


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
    master = None
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        master = cfg.spark.master if cfg else "local[2]"
        builder = builder.master(master)
    conf = session_conf(cfg, master)
    if master is not None:  # we start the JVM: the cleaning UDFs' jar goes on its classpath
        from mmpipeline.clean.sql import udf_jar

        jar = udf_jar()
        if jar is not None:
            conf["spark.jars"] = ",".join(j for j in (conf.get("spark.jars"), str(jar)) if j)
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
