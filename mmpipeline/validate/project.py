"""Running checks with Great Expectations 1.x on Spark DataFrames: the GX project and its set-up.

GE runs on the Spark DataFrame itself (a Spark data source, one DataFrame asset per table and a
whole-dataframe batch definition), never on a pandas copy. With ``lake_root`` the GX project is
file based under ``<lake root>/ops/gx`` (suites, validation definitions, checkpoints, results) and
every validation updates the Data Docs site at ``<lake root>/ops/data_docs/index.html``; without it
an ephemeral context is used (no files written).

    from mmpipeline.validate import Check, validate_dataframe, store_reports
    import great_expectations.expectations as gxe

    report = validate_dataframe(df, "gold.search_ranking", "search_ranking", [
        Check(gxe.ExpectColumnValuesToNotBeNull(column="product_id"), "critical"),
        Check(gxe.ExpectTableRowCountToBeBetween(min_value=1), "warning", name="not_empty"),
    ], lake_root=cfg.lake.root, run_date=ctx.run_date)
    store_reports(ctx.lake, ctx.run_date, [report])
    if report.failed_critical:
        raise StageError(report.message())
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmpipeline.validate.checks import Check, ValidationReport, check_result

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

DATASOURCE = "mmpipeline_spark"
BATCH_DEFINITION = "whole_dataframe"
DOCS_SITE = "lake_site"
# GE's SUMMARY computes, per column check, examples of unexpected values (a filtered scan each,
# which reads the whole table when nothing is unexpected); BASIC with 0 examples computes only
# the aggregates (GE plans a LIMIT 0 query that Spark answers without reading the data)
DETAIL_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
FAST_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


class GXProject:
    """A GX Data Context with the Spark data source, reused for every table a stage validates.

    ``GXProject.for_lake(root)`` is file based under ``<root>/ops/gx`` with Data Docs at
    ``<root>/ops/data_docs``; ``GXProject.ephemeral()`` keeps everything in memory.
    """

    def __init__(self, context, data_docs_dir: Path | None = None, spark=None, result_detail: str = "on_failure"):
        self.context = context
        # "on_failure": checks run with GE's BASIC result format and no unexpected-value examples
        # (aggregates only); only when one fails is the suite re-run with SUMMARY for its examples.
        # "always": SUMMARY every time (one extra scan per column check for its examples).
        self.result_detail = result_detail
        self.data_docs_dir = data_docs_dir
        self.spark = spark
        self._datasource = None

    @classmethod
    def for_lake(cls, lake_root: str | Path, spark=None) -> "GXProject":
        import great_expectations as gx

        root = Path(lake_root)
        ops = root / "ops"
        ops.mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(ops))
        docs = ops / "data_docs"
        site = {"class_name": "SiteBuilder", "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
        sites = dict(context.variables.data_docs_sites or {})
        changed = False
        if sites.get(DOCS_SITE) != site:
            if DOCS_SITE in sites:
                context.update_data_docs_site(DOCS_SITE, site)
            else:
                context.add_data_docs_site(DOCS_SITE, site)
            changed = True
        for other in [s for s in sites if s != DOCS_SITE]:  # the default site lives elsewhere
            context.delete_data_docs_site(other)
            changed = True
        if context.variables.analytics_enabled is not False:
            context.variables.analytics_enabled = False
            changed = True
        if changed:
            context.variables.save()
        _quiet_progress(context)
        return cls(context, docs, spark)

    @classmethod
    def ephemeral(cls, spark=None) -> "GXProject":
        import great_expectations as gx

        context = gx.get_context(mode="ephemeral")
        _quiet_progress(context)
        return cls(context, None, spark)

    @property
    def docs_index(self) -> Path | None:
        return self.data_docs_dir / "index.html" if self.data_docs_dir else None

    def _source(self):
        if self._datasource is None:
            kw = {"name": DATASOURCE, "persist": False}  # we persist (and release) the frame ourselves
            try:
                self._datasource = self.context.data_sources.get(DATASOURCE)
            except (KeyError, ValueError, LookupError):
                self._datasource = self.context.data_sources.add_spark(**kw)
            else:
                if getattr(self._datasource, "persist", False):
                    self._datasource = self.context.data_sources.add_or_update_spark(**kw)
        return self._datasource

    def _batch_definition(self, asset_name: str):
        ds = self._source()
        try:
            asset = ds.get_asset(asset_name)
        except LookupError:
            asset = ds.add_dataframe_asset(name=asset_name)
        try:
            return asset.get_batch_definition(BATCH_DEFINITION)
        except (KeyError, LookupError):
            return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)

    def validate(self, df: "DataFrame", table_name: str, suite_name: str, checks: list[Check],
                 run_date: dt.date | None = None, data_docs: bool = True, count_rows: bool = True) -> ValidationReport:
        """Run ``checks`` as one GE suite on the Spark DataFrame ``df``; returns the report."""
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.core.run_identifier import RunIdentifier

        if not checks:
            return ValidationReport(table_name, suite_name, [], run_date=run_date)
        names = [c.check_name() for c in checks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{table_name}: check names must be unique, repeated: {dupes}")
        t0 = time.perf_counter()
        by_name = dict(zip(names, checks))
        ctx = self.context
        suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=suite_name, expectations=[c.build() for c in checks]))
        vd = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite_name, data=self._batch_definition(table_name), suite=suite))
        actions = []
        if data_docs and self.data_docs_dir is not None:
            actions.append(UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE]))
        cached_here = not df.is_cached
        if cached_here:
            df = df.persist()
        try:
            run_name = str(run_date) if run_date else "adhoc"
            run_id = RunIdentifier(run_name=run_name, run_time=dt.datetime.now(dt.timezone.utc))
            fmt = FAST_RESULT_FORMAT if self.result_detail == "on_failure" else DETAIL_RESULT_FORMAT
            cp = ctx.checkpoints.add_or_update(gx.Checkpoint(
                name=suite_name, validation_definitions=[vd], actions=actions, result_format=fmt))
            result = cp.run(batch_parameters={"dataframe": df}, run_id=run_id)
            suite_result = next(iter(result.run_results.values()))
            if fmt is FAST_RESULT_FORMAT and not all(r.success for r in suite_result.results):
                # something failed: once more with the examples of unexpected values (GE's SUMMARY)
                cp = ctx.checkpoints.add_or_update(gx.Checkpoint(
                    name=suite_name, validation_definitions=[vd], actions=[], result_format=DETAIL_RESULT_FORMAT))
                result = cp.run(batch_parameters={"dataframe": df}, run_id=run_id)
                suite_result = next(iter(result.run_results.values()))
            out = [check_result(r, table_name, suite_name, by_name,
                                 sample_rows=lambda kw: _sample_unexpected_rows(df, kw))
                    for r in suite_result.results]
            rows = None
            if count_rows:  # GE counted already when the suite has a row-count check; else one more job
                rc = [c for c in out if c.expectation == "expect_table_row_count_to_be_between" and not c.error]
                obs = rc[0].result.get("observed_value") if rc else None
                rows = obs if isinstance(obs, int) else df.count()
        finally:
            if cached_here:
                df.unpersist()
        order = {n: i for i, n in enumerate(names)}
        out.sort(key=lambda c: order.get(c.check_name, len(order)))
        docs = str(self.docs_index) if actions else None
        rep = ValidationReport(table_name, suite_name, out, run_date=run_date, rows=rows,
                               seconds=time.perf_counter() - t0, data_docs=docs)
        log.info("validate %s: %s rows, %d checks, %d critical failed, %d warnings in %.1fs", table_name,
                 f"{rows:,}" if rows is not None else "?", len(out), len(rep.failed_critical),
                 len(rep.failed_warnings), rep.seconds)
        return rep

    def build_data_docs(self) -> Path | None:
        """Rebuild the whole Data Docs site (every stored result); validate() updates it incrementally."""
        if self.data_docs_dir is None:
            return None
        self.context.build_data_docs(site_names=[DOCS_SITE])
        return self.docs_index


def _sample_unexpected_rows(df: "DataFrame", kwargs: dict[str, Any], n: int = 3) -> list[dict[str, Any]]:
    """A few offending rows of a failed UnexpectedRowsExpectation, for the readable message."""
    import uuid

    view = f"mmp_gx_{uuid.uuid4().hex[:12]}"
    try:
        df.createOrReplaceTempView(view)
        q = str(kwargs.get("unexpected_rows_query", "")).format(batch=view)
        return [r.asDict() for r in df.sparkSession.sql(q).limit(n).collect()]
    except Exception as e:  # only decoration; the GE outcome stands
        log.debug("could not sample unexpected rows: %s", e)
        return []
    finally:
        df.sparkSession.catalog.dropTempView(view)


def _quiet_progress(context) -> None:
    """GE's per-metric tqdm bars are noise next to our per-table log lines and summary table."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    try:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception as e:  # pragma: no cover - cosmetic only
        log.debug("could not disable GE progress bars: %s", e)


def validate_dataframe(df: "DataFrame", table_name: str, suite_name: str | None, expectations: list[Check],
                       *, lake_root: str | Path | None = None, project: GXProject | None = None,
                       run_date: dt.date | None = None, data_docs: bool = True) -> ValidationReport:
    """Validate a Spark DataFrame against ``expectations`` with GE; returns a :class:`ValidationReport`.

    Pass ``project`` to reuse a GX context across tables (faster), or ``lake_root`` for the lake's
    file-based project (results kept, Data Docs updated); with neither, an ephemeral context.
    """
    if project is None:
        project = GXProject.for_lake(lake_root) if lake_root is not None else GXProject.ephemeral()
    return project.validate(df, table_name, suite_name or table_name, expectations, run_date=run_date,
                            data_docs=data_docs)
