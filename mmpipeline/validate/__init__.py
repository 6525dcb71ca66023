"""Data validation with Great Expectations 1.x (run on Spark DataFrames).

* :mod:`mmpipeline.validate.checks`     the check model, pure: :class:`Check`, :class:`CheckResult`,
  :class:`ValidationReport` (message, ``ops.validation`` rows), GE result -> :class:`CheckResult`.
* :mod:`mmpipeline.validate.formatting` GE result dicts as readable text / plain JSON, pure.
* :mod:`mmpipeline.validate.suites`     the suites per silver table (thresholds from ``cfg.quality``)
  and reusable ranking checks for publish, pure.
* :mod:`mmpipeline.validate.project`    the GX project (file based under the lake, or ephemeral) and
  :func:`validate_dataframe`: runs a suite on a Spark DataFrame, updates Data Docs.
* :mod:`mmpipeline.validate.store`      :func:`store_reports`: results into ``ops.validation``.
* :func:`run` the ``validate`` stage (:mod:`mmpipeline.validate.stage`: reads silver.*, validates,
  stores, fails on a critical failure).

The timing benchmark that was ``validate/timing.py`` is :mod:`mmpipeline.bench.validate`.
"""

from mmpipeline.validate.checks import Check, CheckResult, ValidationReport
from mmpipeline.validate.formatting import format_observed
from mmpipeline.validate.project import GXProject, validate_dataframe
from mmpipeline.validate.store import store_reports

__all__ = ["Check", "CheckResult", "GXProject", "ValidationReport", "format_observed", "run", "store_reports",
           "validate_dataframe", "ranking_checks"]


def run(ctx):
    """The validate stage (see :mod:`mmpipeline.validate.stage`)."""
    from mmpipeline.validate.stage import run as _run

    return _run(ctx)


def ranking_checks(*args, **kwargs):
    """Checks for a ranking table (see :func:`mmpipeline.validate.suites.ranking_checks`)."""
    from mmpipeline.validate.suites import ranking_checks as _rc

    return _rc(*args, **kwargs)
