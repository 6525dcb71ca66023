"""Great Expectations checks a ranking must pass before it is published.

The gate checks the ranking itself, whatever the ops tables hold:

* the shared ranking checks (:mod:`mmpipeline.validate`): every query has at least
  ``score.min_results_per_query`` results; scores finite (no NaN, +-inf or null); ranks exactly 1..n
  per query; a product once per query;
* coverage of the run's own query set -- derived the way the score stage derives it
  (:func:`mmpipeline.score.queries.build_query_set` on the silver tables of the run date, plus
  ``score.query_list``), not read from ``ops.score_runs``: at least ``score.min_query_coverage`` of it;
* every product id exists in the catalog (``silver.products``) of the run date;
* score sanity: no sentinel values (``|score| <= score.max_abs_score``), not all scores equal, and
  ranks consistent with scores (a lower rank never has a higher score);
* the model pinned in the rows is the registered version behind the alias the run was meant to
  use (``score.model_alias``, normally ``champion``);
* no duplicate listings: within the top ``score.collapse_check_k`` of a query, no two products share
  the normalised title (and, with ``score.collapse_key: title_image``, the image hash) -- what the
  score stage's near-duplicate collapse (:mod:`mmpipeline.score.dedupe`) guarantees. Critical when
  ``score.collapse_duplicates`` is on, a warning when it is off.

All but one are critical: a single failure blocks the publish. GE runs on the Spark DataFrame; the
catalog and the query set are Spark temp views the checks' SQL joins against, so nothing is
collected to the driver.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame

    from mmpipeline.config import Config
    from mmpipeline.validate import ValidationReport

log = logging.getLogger(__name__)

SUITE = "search_ranking_publish"
TABLE = "gold.search_ranking"
CATALOG_VIEW = "mmp_publish_catalog"
QUERY_SET_VIEW = "mmp_publish_query_set"


# ----------------------------------------------------------------------------- the run date's inputs


def _commit_run_date(entry: dict[str, Any]) -> dt.date | None:
    meta = entry.get("metadata") or {}  # Lake.history: one shape for both engines
    raw = meta.get("run_date") or meta.get("mmp_run_date")
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(str(raw)[:10])
    except ValueError:
        return None


def version_as_of(lake, name: str, run_date: dt.date) -> int | None:
    """The version of ``name`` that was current for ``run_date``: the commit before the first one
    written for a later run date (commit metadata ``run_date``), else the latest version. None when
    the table does not exist or was first written for a later date."""
    if not lake.exists(name):
        return None
    hist = sorted(lake.history(name), key=lambda h: int(h["version"]))
    for h in hist:
        d = _commit_run_date(h)
        if d is not None and d > run_date:
            v = int(h["version"]) - 1
            return v if v >= 0 else None
    return lake.version(name)


@dataclass
class RunInputs:
    """What the ranking of one run date is checked against."""

    catalog_table: str
    catalog_version: int | None
    query_set: "pd.DataFrame"
    versions: dict[str, int | None]


def expected_query_set(cfg: "Config", lake, run_date: dt.date) -> tuple["pd.DataFrame", dict[str, int | None]]:
    """The query set the score stage was meant to score for ``run_date``: the same derivation
    (:func:`build_query_set` over silver.queries / judgments / interactions and ``score.query_list``),
    on the silver tables as they were for that date."""
    from mmpipeline.score.queries import build_query_set, read_query_list

    cols = {"silver.queries": ["query_id", "query_norm", "frequency"],
            "silver.judgments": ["query_id", "query_norm", "product_id", "grade"],
            "silver.interactions": ["query_id", "query_norm", "session_id"]}
    frames, versions = {}, {}
    for name, c in cols.items():
        v = version_as_of(lake, name, run_date)
        versions[name] = v
        frames[name] = None if v is None else lake.read_pandas(name, version=v, columns=c)
    explicit = read_query_list(cfg.score.query_list) if cfg.score.query_list else None
    qset = build_query_set(cfg.score.head_queries, frames["silver.queries"], frames["silver.judgments"],
                           frames["silver.interactions"], explicit)
    return qset, versions


def run_inputs(cfg: "Config", lake, run_date: dt.date) -> RunInputs:
    qset, versions = expected_query_set(cfg, lake, run_date)
    cat_v = version_as_of(lake, "silver.products", run_date)
    versions["silver.products"] = cat_v
    return RunInputs("silver.products", cat_v, qset, versions)


# ----------------------------------------------------------------------------------------- checks


def _sql_str(v: str) -> str:
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def publish_checks(min_results: int, *, query_set_size: int | None = None, min_coverage: float = 1.0,
                   catalog: bool = False, max_abs_score: float = 1e6, model_name: str | None = None,
                   model_version: str | None = None, model_note: str = "", duplicate_k: int = 0,
                   duplicate_key: str = "title_image", duplicate_severity: str = "critical"):
    """The publish suite. ``query_set_size``/``catalog``: the temp views :data:`QUERY_SET_VIEW` and
    :data:`CATALOG_VIEW` are registered (see :func:`validate_ranking`)."""
    import great_expectations.expectations as gxe

    from mmpipeline.validate import Check, ranking_checks

    def rows(name: str, sql: str, desc: str, note: str, severity: str = "critical") -> Check:
        return Check(gxe.UnexpectedRowsExpectation(unexpected_rows_query=sql, description=desc), severity,
                     name=name, note=note)

    checks = list(ranking_checks(min_results))
    if query_set_size is not None:
        share = float(min_coverage)
        checks.append(rows(
            "covers_query_set",
            f"SELECT expected, covered FROM (SELECT COUNT(*) AS expected, COUNT(b.query_id) AS covered "
            f"FROM {QUERY_SET_VIEW} e LEFT JOIN (SELECT DISTINCT query_id FROM {{batch}}) b "
            f"ON e.query_id = b.query_id) t WHERE expected = 0 OR covered < CAST({share!r} AS DOUBLE) * expected",
            f"the ranking covers at least {share:.0%} of the run's query set",
            f"the run's query set has {int(query_set_size):,} queries; at least {share:.0%} must be ranked"))
        checks.append(rows(
            "queries_in_query_set",
            f"SELECT DISTINCT b.query_id FROM {{batch}} b LEFT ANTI JOIN {QUERY_SET_VIEW} e ON b.query_id = e.query_id",
            "every ranked query belongs to the run's query set", "ranked queries outside the run's query set",
            severity="warning"))
    if catalog:
        checks.append(rows(
            "products_in_catalog",
            f"SELECT b.query_id, b.`rank`, b.product_id FROM {{batch}} b LEFT ANTI JOIN {CATALOG_VIEW} c "
            f"ON b.product_id = c.product_id",
            "every ranked product exists in the catalog of the run date",
            "rows whose product id is not in silver.products of the run date"))
    if catalog and duplicate_k > 0:
        from mmpipeline.score.dedupe import title_key_sql

        tk = title_key_sql("c.title").replace("{", "{{").replace("}", "}}")  # GE formats {batch}
        by_image = duplicate_key == "title_image"
        img = ", coalesce(c.image_hash, '')" if by_image else ""
        checks.append(rows(
            "no_duplicate_listings",
            f"SELECT b.query_id, {tk} AS title_key, COUNT(*) AS listings, "
            f"concat_ws(',', sort_array(collect_list(b.`rank`))) AS ranks FROM {{batch}} b "
            f"JOIN {CATALOG_VIEW} c ON b.product_id = c.product_id WHERE b.`rank` <= {int(duplicate_k)} "
            f"AND {tk} <> '' GROUP BY b.query_id, {tk}{img} HAVING COUNT(*) > 1",
            f"no two products with the same normalised title{' and image' if by_image else ''} within a "
            f"query's top {int(duplicate_k)}",
            f"queries whose top {int(duplicate_k)} shows the same listing twice (score.collapse_duplicates "
            f"collapses them in the score stage: re-run score with it on)", severity=duplicate_severity))
    checks.append(rows(
        "scores_not_sentinel",
        f"SELECT query_id, `rank`, product_id, score FROM {{batch}} WHERE abs(score) > CAST({float(max_abs_score)!r} AS DOUBLE)",
        f"|score| <= {max_abs_score:g} (no sentinel values)", f"rows with |score| above {max_abs_score:g}"))
    checks.append(rows(
        "scores_not_constant",
        "SELECT COUNT(*) AS results, COUNT(DISTINCT score) AS distinct_scores FROM {batch} "
        "HAVING COUNT(*) > 1 AND COUNT(DISTINCT score) < 2",
        "the scores are not all equal", "a ranking whose scores are all equal ranks nothing"))
    checks.append(rows(
        "ranks_follow_scores",
        "SELECT query_id, `rank`, score, prev_score FROM (SELECT query_id, `rank`, score, "
        "LAG(score) OVER (PARTITION BY query_id ORDER BY `rank`) AS prev_score FROM {batch}) t "
        "WHERE prev_score IS NOT NULL AND score > prev_score",
        "within a query, a lower rank never has a higher score", "rows scored above the row ranked before them"))
    expect_name = "''" if model_name is None else _sql_str(model_name)
    expect_version = "''" if model_version is None else _sql_str(model_version)
    checks.append(rows(
        "model_is_expected_version",
        f"SELECT model_name, model_version, COUNT(*) AS results FROM {{batch}} WHERE model_name IS NULL OR "
        f"model_version IS NULL OR model_name <> {expect_name} OR model_version <> {expect_version} "
        f"GROUP BY model_name, model_version",
        "every row was scored by the registered version the run was meant to use",
        model_note or f"expected {model_name} v{model_version}"))
    return checks


def validate_ranking(ranking: "DataFrame", run_date: dt.date, cfg: "Config", inputs: RunInputs | None, lake,
                     model_name: str | None, model_version: str | None, model_note: str = "",
                     lake_root: str | None = None) -> "ValidationReport":
    """Run the publish suite on the Spark DataFrame of one run date's ranking.

    ``inputs``: the run date's query set and catalog version (None: those checks are skipped, e.g.
    in unit tests of the ranking checks alone). ``model_name``/``model_version``: the registered
    version the run was meant to use (None: no version has the alias, so every row fails)."""
    from mmpipeline.validate import validate_dataframe

    spark = ranking.sparkSession
    sc = cfg.score
    qsize, catalog = None, False
    if inputs is not None:
        import pandas as pd

        qs = inputs.query_set[["query_id"]].astype(str)
        qdf = spark.createDataFrame(qs if len(qs) else pd.DataFrame({"query_id": pd.Series([], dtype=str)}),
                                    schema="query_id string")
        qdf.createOrReplaceTempView(QUERY_SET_VIEW)
        qsize = len(qs)
        if inputs.catalog_version is not None:
            lake.read(inputs.catalog_table, version=inputs.catalog_version) \
                .select("product_id", "title", "image_hash").createOrReplaceTempView(CATALOG_VIEW)
        else:  # no catalog for that date: every product id is unknown
            spark.createDataFrame([], schema="product_id string, title string, image_hash string") \
                .createOrReplaceTempView(CATALOG_VIEW)
        catalog = True
    checks = publish_checks(sc.min_results_per_query, query_set_size=qsize, min_coverage=sc.min_query_coverage,
                            catalog=catalog, max_abs_score=sc.max_abs_score, model_name=model_name,
                            model_version=model_version, model_note=model_note,
                            duplicate_k=sc.collapse_check_k, duplicate_key=sc.collapse_key,
                            duplicate_severity="critical" if sc.collapse_duplicates else "warning")
    try:
        return validate_dataframe(ranking, TABLE, SUITE, checks, lake_root=lake_root, run_date=run_date,
                                  data_docs=cfg.quality.data_docs)  # quality.data_docs: as the validate stage
    finally:
        for v in (QUERY_SET_VIEW, CATALOG_VIEW):
            spark.catalog.dropTempView(v)
