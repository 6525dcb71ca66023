"""Great Expectations checks a ranking must pass before it is published.

Built on the shared validation API (:mod:`mmpipeline.validate`): its ranking checks (every query has
at least ``score.min_results_per_query`` results; scores finite -- no NaN, +-inf or null; ranks
exactly 1..n per query; a product once per query) plus two that need the score run's record: the
ranking covers every query of the run's query set, and one model version produced every row.
All are critical: a single failure blocks the publish. GE runs on the Spark DataFrame.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from mmpipeline.validate import ValidationReport

log = logging.getLogger(__name__)

SUITE = "search_ranking_publish"
TABLE = "gold.search_ranking"


def publish_checks(min_results: int, expected_queries: int | None = None, model_version: str | None = None):
    import great_expectations.expectations as gxe

    from mmpipeline.validate import Check, ranking_checks

    checks = list(ranking_checks(min_results))
    if expected_queries is not None:
        checks.append(Check(gxe.ExpectColumnUniqueValueCountToBeBetween(
            column="query_id", min_value=int(expected_queries), max_value=int(expected_queries)),
            "critical", name="covers_query_set", note=f"the run's query set has {int(expected_queries):,} queries"))
    if model_version is not None:
        checks.append(Check(gxe.ExpectColumnValuesToBeInSet(column="model_version", value_set=[str(model_version)]),
                            "critical", name="one_model_version", note=f"scored with version {model_version}"))
        checks.append(Check(gxe.ExpectColumnValuesToNotBeNull(column="model_version"), "critical",
                            name="not_null(model_version)"))
    return checks


def validate_ranking(ranking: "DataFrame", run_date: dt.date, min_results: int, expected_queries: int | None = None,
                     model_version: str | None = None, lake_root: str | None = None) -> "ValidationReport":
    """Run the publish suite on the Spark DataFrame of one run date's ranking."""
    from mmpipeline.validate import validate_dataframe

    return validate_dataframe(ranking, TABLE, SUITE, publish_checks(min_results, expected_queries, model_version),
                              lake_root=lake_root, run_date=run_date)
