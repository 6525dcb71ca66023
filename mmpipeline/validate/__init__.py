"""Data validation with Great Expectations 1.x (run on Spark DataFrames).

* :mod:`mmpipeline.validate.api`    generic API: :class:`Check`, :func:`validate_dataframe`,
  :class:`ValidationReport`, :func:`store_reports` (ops.validation), Data Docs under the lake.
* :mod:`mmpipeline.validate.suites` the suites per silver table (thresholds from ``cfg.quality``)
  and reusable ranking checks for publish.
* :func:`run` the ``validate`` stage.
"""

from mmpipeline.validate.api import (
    Check,
    CheckResult,
    GXProject,
    ValidationReport,
    format_observed,
    store_reports,
    validate_dataframe,
)

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
