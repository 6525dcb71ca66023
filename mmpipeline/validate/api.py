"""Generic validation API on Great Expectations 1.x, used by the validate stage and by publish.

    from mmpipeline.validate import Check, validate_dataframe, store_reports
    import great_expectations.expectations as gxe

    report = validate_dataframe(df, "gold.search_ranking", "search_ranking", [
        Check(gxe.ExpectColumnValuesToNotBeNull(column="product_id"), "critical"),
        Check(gxe.ExpectTableRowCountToBeBetween(min_value=1), "warning", name="not_empty"),
    ], lake_root=cfg.lake.root, run_date=ctx.run_date)
    store_reports(ctx.lake, ctx.run_date, [report])
    if report.failed_critical:
        raise StageError(report.message())

GE runs on the Spark DataFrame itself (a Spark data source, one DataFrame asset per table and a
whole-dataframe batch definition), never on a pandas copy. With ``lake_root`` the GX project is
file based under ``<lake root>/ops/gx`` (suites, validation definitions, checkpoints, results) and
every validation updates the Data Docs site at ``<lake root>/ops/data_docs/index.html``; without it
an ephemeral context is used (no files written).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from mmpipeline.lake import Lake

log = logging.getLogger(__name__)

Severity = Literal["critical", "warning"]
SEVERITIES = ("critical", "warning")
DATASOURCE = "mmpipeline_spark"
BATCH_DEFINITION = "whole_dataframe"
DOCS_SITE = "lake_site"
# GE's SUMMARY computes, per column check, examples of unexpected values (a filtered scan each,
# which reads the whole table when nothing is unexpected); BASIC with 0 examples computes only
# the aggregates (GE plans a LIMIT 0 query that Spark answers without reading the data)
DETAIL_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
FAST_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


# ------------------------------------------------------------------------------------- checks


@dataclass
class Check:
    """One expectation plus how much its failure matters.

    ``expectation`` is a GE expectation instance (``great_expectations.expectations.Expect...``) or a
    config dict ``{"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}}``.
    ``name`` identifies the check in reports and in ``ops.validation`` (default: type + column).
    ``observed`` optionally turns GE's result dict into the readable observed value;
    ``note`` is appended to it (e.g. "previous run 1,000 rows").
    """

    expectation: Any
    severity: Severity = "critical"
    name: str | None = None
    note: str = ""
    observed: Callable[[dict[str, Any]], str] | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def build(self):
        """The GE expectation instance, with this check's severity and name in its meta."""
        import great_expectations.expectations as gxe  # noqa: F401  (registers expectation types)
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        exp = self.expectation
        if isinstance(exp, dict):
            exp = ExpectationConfiguration(type=exp["type"], kwargs=dict(exp.get("kwargs", {})),
                                           meta=dict(exp.get("meta", {}))).to_domain_obj()
        else:
            exp = exp.copy(deep=True)
        exp.severity = self.severity
        exp.meta = {**(exp.meta or {}), "check_name": self.check_name(exp)}
        return exp

    def check_name(self, exp=None) -> str:
        if self.name:
            return self.name
        exp = exp if exp is not None else self.build()
        col = _column_of(exp.configuration.kwargs)
        return f"{exp.expectation_type}({col})" if col else exp.expectation_type


def _column_of(kwargs: dict[str, Any]) -> str:
    if kwargs.get("column"):
        return str(kwargs["column"])
    if kwargs.get("column_list"):
        return ",".join(map(str, kwargs["column_list"]))
    if kwargs.get("column_A"):
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return ""


# ------------------------------------------------------------------------------------ results


@dataclass
class CheckResult:
    table_name: str
    suite: str
    check_name: str
    expectation: str  # GE expectation type
    column: str
    severity: Severity
    success: bool
    observed_value: str  # readable
    kwargs: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # GE's raw result dict
    error: str | None = None

    def line(self) -> str:
        on = f" on {self.column}" if self.column else ""
        status = "passed" if self.success else "FAILED"
        return (f"{self.table_name}: {self.severity} check {self.check_name!r} ({self.expectation}{on}) {status}; "
                f"observed {self.observed_value}")


@dataclass
class ValidationReport:
    table_name: str
    suite: str
    results: list[CheckResult]
    run_date: dt.date | None = None
    rows: int | None = None
    seconds: float = 0.0
    data_docs: str | None = None

    @property
    def failed_critical(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success and r.severity == "critical"]

    @property
    def failed_warnings(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success and r.severity == "warning"]

    @property
    def success(self) -> bool:
        return not self.failed_critical

    def message(self, include_warnings: bool = True) -> str:
        """Readable summary naming the table, each failed expectation and its observed value."""
        failed = self.failed_critical + (self.failed_warnings if include_warnings else [])
        if not failed:
            return f"{self.table_name}: all {len(self.results)} checks of suite {self.suite!r} passed"
        head = (f"{self.table_name}: {len(self.failed_critical)} critical and {len(self.failed_warnings)} warning "
                f"check(s) of suite {self.suite!r} failed")
        return head + "".join(f"\n  - {r.line()}" for r in failed)

    def to_rows(self, run_date: dt.date | None = None, validated_at: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Rows for ``ops.validation``."""
        run_date = run_date or self.run_date
        if run_date is None:
            raise ValueError("to_rows needs a run_date")
        validated_at = validated_at or dt.datetime.now(dt.timezone.utc)
        return [{
            "run_date": run_date, "table_name": r.table_name, "suite": r.suite, "check_name": r.check_name,
            "expectation": r.expectation, "column_name": r.column, "severity": r.severity, "success": r.success,
            "observed_value": r.observed_value[:2000],
            "details": _json({"kwargs": r.kwargs, "result": r.result, "error": r.error})[:20000],
            "validated_at": validated_at,
        } for r in self.results]


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, sort_keys=True)


def _short(v: Any, n: int = 160) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def format_observed(exp_type: str, result: dict[str, Any]) -> str:
    """GE's result dict as a short readable observed value."""
    if "unexpected_count" in result:  # column map expectations
        n, bad = result.get("element_count") or 0, result.get("unexpected_count") or 0
        pct = result.get("unexpected_percent")
        missing = result.get("missing_count") or 0
        s = f"{bad:,} of {n:,} rows unexpected" + (f" ({pct:.2f}%)" if pct is not None else "")
        if missing and "null" not in exp_type:
            s += f", {missing:,} null (not checked)"
        if bad and result.get("partial_unexpected_counts"):
            eg = ", ".join(f"{c['value']!r} x{c['count']}" for c in result["partial_unexpected_counts"][:5])
            s += f", e.g. {eg}"
        elif bad and result.get("partial_unexpected_list"):
            s += f", e.g. {_short(result['partial_unexpected_list'][:5])}"
        return s
    obs = result.get("observed_value")
    details = result.get("details") or {}
    if exp_type == "unexpected_rows_expectation":
        s = f"{obs:,} unexpected row(s)" if isinstance(obs, int) else f"{obs} unexpected row(s)"
        rows = details.get("unexpected_rows") if isinstance(details, dict) else None
        if obs and rows:
            s += f", e.g. {_short(rows[:3])}"
        return s
    if isinstance(details, dict) and details.get("mismatched"):
        mm = details["mismatched"]
        parts = [f"{k}: {v}" for k, v in mm.items() if v]
        return f"{_short(obs)} ({'; '.join(parts)})" if parts else _short(obs)
    if isinstance(obs, float):
        return f"{obs:.6g}"
    if isinstance(obs, int) and not isinstance(obs, bool):
        return f"{obs:,}"
    return _short(obs)


# -------------------------------------------------------------------------------- GX project


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
            out = [self._check_result(r, df, table_name, suite_name, by_name) for r in suite_result.results]
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

    @staticmethod
    def _check_result(r, df: "DataFrame", table_name: str, suite_name: str, by_name: dict[str, Check]) -> CheckResult:
        cfg = r.expectation_config
        name = (cfg.meta or {}).get("check_name") or cfg.type
        check = by_name.get(name)
        res = dict(r.result or {})
        err = None
        exc = r.exception_info or {}
        infos = [exc] if "raised_exception" in exc else [v for v in exc.values() if isinstance(v, dict)]
        msgs = [str(i.get("exception_message") or i) for i in infos if i.get("raised_exception")]
        if msgs:
            err = "; ".join(msgs)
        if err:
            observed = f"error: {_short(err, 300)}"
        elif cfg.type == "unexpected_rows_expectation" and not r.success and res.get("observed_value") \
                and not (res.get("details") or {}).get("unexpected_rows"):
            res["details"] = {"unexpected_rows": _sample_unexpected_rows(df, cfg.kwargs)}
            observed = format_observed(cfg.type, res)
        elif check is not None and check.observed is not None:
            try:
                observed = check.observed(res)
            except Exception as e:  # a formatter must not hide the outcome
                observed = f"{format_observed(cfg.type, res)} (formatter failed: {e})"
        else:
            observed = format_observed(cfg.type, res)
        if check is not None and check.note:
            observed = f"{observed}; {check.note}"
        return CheckResult(
            table_name=table_name, suite=suite_name, check_name=name, expectation=cfg.type,
            column=_column_of(cfg.kwargs), severity=(check.severity if check else "critical"),
            success=bool(r.success) and not err, observed_value=observed,
            kwargs=_plain(cfg.kwargs), result=_plain(res), error=err)

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


def _plain(obj: Any) -> Any:
    """GE result/kwargs dicts as plain JSON-able Python (enums, numpy scalars, Conditions -> str)."""
    return json.loads(_json(_to_jsonable(obj)))


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        try:
            return obj.item()
        except Exception:
            return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "to_json_dict"):
        return _to_jsonable(obj.to_json_dict())
    return str(obj)


def _quiet_progress(context) -> None:
    """GE's per-metric tqdm bars are noise next to our per-table log lines and summary table."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    try:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception as e:  # pragma: no cover - cosmetic only
        log.debug("could not disable GE progress bars: %s", e)


# ------------------------------------------------------------------------------- entry points


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


def store_reports(lake: "Lake", run_date: dt.date, reports: list[ValidationReport]) -> int:
    """Replace the ``ops.validation`` rows of ``run_date`` for the validated tables, in one commit.

    Rows of other tables in that run date's partition are kept, so the validate and publish stages
    can both record results for the same date; re-running gives the same rows (no duplicates).
    Returns the number of rows written for these tables.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from mmpipeline.lake import conform_arrow
    from mmpipeline.schemas import table

    spec = table("ops.validation")
    now = dt.datetime.now(dt.timezone.utc)
    rows = [row for rep in reports for row in rep.to_rows(run_date, now)]
    tables = sorted({rep.table_name for rep in reports})
    if not tables:
        return 0
    new = conform_arrow(pa.Table.from_pylist(rows, schema=_arrow_schema(spec)) if rows
                        else _arrow_schema(spec).empty_table(), spec)
    parts = [new]
    if lake.exists(spec.name):
        old = lake.read_arrow(spec.name, filters=[("run_date", "=", run_date)])
        if old.num_rows:
            keep = pc.invert(pc.is_in(old.column("table_name"), value_set=pa.array(tables)))
            parts.insert(0, conform_arrow(old.filter(keep), spec))
    lake.write(spec.name, pa.concat_tables(parts), mode="overwrite", partition={"run_date": run_date})
    log.info("ops.validation: %d rows for %s on %s", len(rows), ", ".join(tables), run_date)
    return len(rows)


def _arrow_schema(spec):
    from mmpipeline.schemas import arrow_schema

    return arrow_schema(spec)
