"""What a stage gets: the config, the run date and options, and lazily the Spark session and lake."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mmpipeline.config import Config

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from mmpipeline.lake import Lake

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage failed for a reason a person can act on; the CLI prints it and exits non-zero."""


@dataclass
class RunContext:
    cfg: Config
    run_date: dt.date
    full_refresh: bool = False
    model_alias: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Config, run_date: dt.date | str | None = None, **kw: Any) -> "RunContext":
        return cls(cfg=cfg, run_date=cfg.effective_run_date(run_date), **kw)

    @cached_property
    def spark(self) -> "SparkSession":
        from mmpipeline.spark import get_spark

        return get_spark(self.cfg)

    @cached_property
    def lake(self) -> "Lake":
        """The lake, with Spark attached only when the stage has already started it (lazy)."""
        from mmpipeline.lake import Lake

        return Lake.from_config(self.cfg, spark=self.__dict__.get("spark"))

    def spark_lake(self) -> "Lake":
        """The lake with a Spark session attached (starts Spark when needed)."""
        lake = self.lake
        if lake.spark is None:
            lake.spark = self.spark
        return lake
