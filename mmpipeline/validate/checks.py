"""The check model, pure: a :class:`Check` (an expectation and its severity), a :class:`CheckResult`,
and the :class:`ValidationReport` of one table (its readable message and its ``ops.validation`` rows).

Nothing here runs Great Expectations (``Check.build`` imports it only when called) or touches Spark
or the lake; :mod:`mmpipeline.validate.project` runs the checks, :mod:`mmpipeline.validate.store`
keeps the results.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from mmpipeline.validate.formatting import format_observed, plain, short, to_json

Severity = Literal["critical", "warning"]
SEVERITIES = ("critical", "warning")


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
        col = column_of(exp.configuration.kwargs)
        return f"{exp.expectation_type}({col})" if col else exp.expectation_type


def column_of(kwargs: dict[str, Any]) -> str:
    if kwargs.get("column"):
        return str(kwargs["column"])
    if kwargs.get("column_list"):
        return ",".join(map(str, kwargs["column_list"]))
    if kwargs.get("column_A"):
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return ""


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
            "details": to_json({"kwargs": r.kwargs, "result": r.result, "error": r.error})[:20000],
            "validated_at": validated_at,
        } for r in self.results]


def check_result(r: Any, table_name: str, suite_name: str, by_name: dict[str, Check],
                 sample_rows: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None) -> CheckResult:
    """One GE ``ExpectationValidationResult`` as a :class:`CheckResult` (pure; ``sample_rows`` fetches a
    few offending rows of a failed ``UnexpectedRowsExpectation`` when GE gave none)."""
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
        observed = f"error: {short(err, 300)}"
    elif cfg.type == "unexpected_rows_expectation" and not r.success and res.get("observed_value") \
            and not (res.get("details") or {}).get("unexpected_rows"):
        res["details"] = {"unexpected_rows": sample_rows(cfg.kwargs) if sample_rows else []}
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
        column=column_of(cfg.kwargs), severity=(check.severity if check else "critical"),
        success=bool(r.success) and not err, observed_value=observed,
        kwargs=plain(cfg.kwargs), result=plain(res), error=err)
