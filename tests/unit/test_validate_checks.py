"""The pure half of validate: a GE validation result becomes a CheckResult without Spark or a GX context
(real GE result objects; an exploding expectation, a custom formatter and a row sampler)."""

from __future__ import annotations

from great_expectations.core import ExpectationValidationResult
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

from mmpipeline.validate.checks import Check, check_result


def _result(type_: str, kwargs: dict, success: bool, result: dict, name: str | None = None, exc: dict | None = None):
    cfg = ExpectationConfiguration(type=type_, kwargs=kwargs, meta={"check_name": name} if name else {})
    return ExpectationValidationResult(success=success, expectation_config=cfg, result=result,
                                       exception_info=exc or {"raised_exception": False})


def test_check_result_formats_and_keeps_severity_note_and_formatter():
    check = Check({"type": "expect_column_values_to_be_unique", "kwargs": {"column": "product_id"}}, "warning",
                  name="ids", note="previous run 4 rows")
    r = check_result(_result("expect_column_values_to_be_unique", {"column": "product_id"}, False,
                             {"element_count": 4, "unexpected_count": 2, "unexpected_percent": 50.0,
                              "partial_unexpected_counts": [{"value": "p1", "count": 2}]}, name="ids"),
                     "silver.products", "suite", {"ids": check})
    assert (r.check_name, r.severity, r.column, r.success) == ("ids", "warning", "product_id", False)
    assert r.observed_value == "2 of 4 rows unexpected (50.00%), e.g. 'p1' x2; previous run 4 rows"
    custom = Check({"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}}, name="rows",
                   observed=lambda res: f"{res['observed_value']} rows, want >= 1")
    r = check_result(_result("expect_table_row_count_to_be_between", {"min_value": 1}, True, {"observed_value": 7},
                             name="rows"), "t", "s", {"rows": custom})
    assert r.success and r.observed_value == "7 rows, want >= 1"


def test_an_expectation_that_raised_is_a_failure_with_its_error():
    r = check_result(_result("expect_column_values_to_not_be_null", {"column": "x"}, True, {}, name="x",
                             exc={"raised_exception": True, "exception_message": "column x does not exist"}),
                     "t", "s", {})
    assert not r.success and r.severity == "critical"  # an unknown check counts as critical
    assert r.observed_value == "error: column x does not exist" and r.error == "column x does not exist"


def test_unexpected_rows_are_sampled_only_when_ge_gave_none():
    asked = []

    def sample(kwargs):
        asked.append(kwargs["unexpected_rows_query"])
        return [{"product_id": "p9"}]

    r = check_result(_result("unexpected_rows_expectation", {"unexpected_rows_query": "SELECT * FROM {batch}"},
                             False, {"observed_value": 1}, name="u"), "t", "s", {}, sample_rows=sample)
    assert asked == ["SELECT * FROM {batch}"]
    assert r.observed_value.startswith("1 unexpected row(s), e.g.") and "p9" in r.observed_value
    assert r.result["details"]["unexpected_rows"] == [{"product_id": "p9"}]
