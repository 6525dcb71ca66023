"""The expectation suites: one per silver table (thresholds from ``cfg.quality``), the quarantine
share check, and reusable checks for a ranking table (publish).

Everything here is pure: it builds :class:`~mmpipeline.validate.checks.Check` lists from the config and
a few facts (the previous run's row count, rows in); running them is the caller's business.
"""

from __future__ import annotations

import math
from typing import Any

from mmpipeline.config import Config
from mmpipeline.schemas import TableSpec
from mmpipeline.validate.checks import Check

# name of the row-count check; the stage reads its previous observed value from ops.validation
ROW_COUNT_CHECK = "row_count"


def _gxe():
    import great_expectations.expectations as gxe

    return gxe


# ------------------------------------------------------------------------------- observed values


def _rows_observed(res: dict[str, Any]) -> str:
    obs = res.get("observed_value")
    return f"{obs:,} rows" if isinstance(obs, int) else f"{obs} rows"


def _columns_observed(expected: list[str]):
    def fmt(res: dict[str, Any]) -> str:
        cols = res.get("observed_value") or []
        missing = [c for c in expected if c not in cols]
        if missing:
            return f"missing column(s) {missing} (table has {len(cols)}: {cols})"
        return f"all {len(expected)} registered columns present ({len(cols)} in the table)"

    return fmt


def _share_observed(what: str):
    def fmt(res: dict[str, Any]) -> str:
        n = int(res.get("element_count") or 0)
        missing = int(res.get("missing_count") or 0)
        bad = int(res.get("unexpected_count") or 0)
        considered = n - missing
        if considered <= 0:
            return f"{what}: n/a (no product references an image)"
        ok = considered - bad
        s = f"{what} {ok / considered:.3f} ({ok:,} of {considered:,} with an image reference)"
        if bad and res.get("partial_unexpected_counts"):
            s += ", failures e.g. " + ", ".join(f"{c['value']!r} x{c['count']}" for c in res["partial_unexpected_counts"][:5])
        return s

    return fmt


# ------------------------------------------------------------------------------------ building


def row_count_bounds(previous: int | None, max_change: float, min_rows: int) -> tuple[int, int | None]:
    """Allowed row counts: at least ``min_rows`` and within ``max_change`` of the previous run."""
    if previous is None or previous <= 0:
        return min_rows, None
    lo = max(min_rows, math.ceil(previous * (1 - max_change)))
    hi = math.floor(previous * (1 + max_change))
    return lo, max(hi, lo)


def row_count_check(previous: int | None, previous_label: str, cfg: Config) -> Check:
    q = cfg.quality
    lo, hi = row_count_bounds(previous, q.max_row_count_change, q.min_rows)
    if previous is None:
        note = f"first run (no previous count): allowed >= {lo:,}"
    else:
        note = (f"previous run {previous_label}: {previous:,} rows, allowed {lo:,}.."
                f"{'' if hi is None else f'{hi:,}'} (max change {q.max_row_count_change:.0%})")
    return Check(_gxe().ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi), "critical",
                 name=ROW_COUNT_CHECK, note=note, observed=_rows_observed)


def key_checks(spec: TableSpec) -> list[Check]:
    gxe = _gxe()
    checks = [Check(gxe.ExpectColumnValuesToNotBeNull(column=k), "critical", name=f"key_not_null({k})")
              for k in spec.keys]
    if len(spec.keys) == 1:
        checks.append(Check(gxe.ExpectColumnValuesToBeUnique(column=spec.keys[0]), "critical",
                            name=f"key_unique({spec.keys[0]})"))
    elif spec.keys:
        checks.append(Check(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(spec.keys)), "critical",
                            name=f"key_unique({','.join(spec.keys)})"))
    return checks


def silver_checks(spec: TableSpec, cfg: Config, previous_rows: int | None = None,
                  previous_label: str = "") -> list[Check]:
    """The suite of a silver table: schema, keys, value ranges and domains, row count change."""
    gxe = _gxe()
    q, clean = cfg.quality, cfg.clean
    checks: list[Check] = [
        Check(gxe.ExpectTableColumnsToMatchSet(column_set=spec.column_names, exact_match=False), "critical",
              name="schema_columns", observed=_columns_observed(spec.column_names)),
        row_count_check(previous_rows, previous_label, cfg),
        *key_checks(spec),
    ]
    entity = spec.name.partition(".")[2]
    if entity == "products":
        lo_r, hi_r = q.rating_range
        checks += [
            Check(gxe.ExpectColumnValuesToNotBeNull(column="title"), "critical", name="title_not_null"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, max_value=clean.max_price),
                  "critical", name="price_range"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=lo_r, max_value=hi_r), "critical",
                  name="rating_range"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="popularity", min_value=0), "warning",
                  name="popularity_non_negative"),
            Check(gxe.ExpectColumnValuesToBeInSet(column="image_status", value_set=list(q.image_statuses)), "warning",
                  name="image_status_domain"),
            decodable_image_check(cfg),
        ]
    elif entity == "voice_queries":  # the spoken words are optional (known only for reference clips)
        v = cfg.voice
        checks += [
            Check(gxe.ExpectColumnValuesToNotBeNull(column="audio_hash"), "critical", name="audio_hash_not_null"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="duration_s", min_value=v.min_duration_s,
                                                    max_value=v.max_duration_s), "critical", name="duration_range"),
        ]
    elif entity == "queries":
        checks += [
            Check(gxe.ExpectColumnValuesToNotBeNull(column="query_norm"), "critical", name="query_norm_not_null"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="frequency", min_value=0), "warning",
                  name="frequency_non_negative"),
        ]
    elif entity == "judgments":
        lo_g, hi_g = clean.grade_min, clean.grade_max  # the domain clean enforces (0..3 by default)
        checks += [
            Check(gxe.ExpectColumnValuesToNotBeNull(column="grade"), "critical", name="grade_not_null"),
            Check(gxe.ExpectColumnValuesToBeBetween(column="grade", min_value=lo_g, max_value=hi_g), "critical",
                  name="grade_domain"),
        ]
    elif entity == "interactions":
        checks += [
            Check(gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(q.event_types)), "critical",
                  name="event_type_domain"),
        ]
    return checks


def decodable_image_check(cfg: Config) -> Check:
    """Share of decodable images among products that reference one (GE ``mostly``)."""
    from great_expectations.expectations.row_conditions import Column

    q = cfg.quality
    return Check(
        _gxe().ExpectColumnValuesToBeInSet(
            column="image_status", value_set=list(q.decodable_image_statuses), mostly=q.min_decodable_image_share,
            row_condition=Column("image_ref").is_not_null()),
        "critical", name="decodable_image_share", observed=_share_observed("decodable share"),
        note=f"required >= {q.min_decodable_image_share:.3f}")


def quarantine_check(rows_in: int, cfg: Config, source: str) -> Check:
    """Warning when more than ``quality.max_quarantine_share`` of a run's input rows were quarantined.

    Run on the quarantine table's partition of the run date; ``rows_in`` is that run's input count.
    """
    share = cfg.quality.max_quarantine_share
    limit = math.floor(share * rows_in)

    def fmt(res: dict[str, Any]) -> str:
        n = res.get("observed_value")
        if not isinstance(n, int):
            return f"{n} quarantined"
        return f"{n:,} of {rows_in:,} rows quarantined ({n / rows_in:.2%})" if rows_in else f"{n:,} quarantined"

    return Check(_gxe().ExpectTableRowCountToBeBetween(min_value=0, max_value=limit), "warning",
                 name="quarantine_share", observed=fmt,
                 note=f"allowed <= {share:.0%} (<= {limit:,} rows; rows in from {source})")


# ----------------------------------------------------------------------------------- rankings


def ranking_checks(min_results: int, *, query_col: str = "query_id", rank_col: str = "rank",
                   score_col: str = "score", product_col: str = "product_id",
                   severity: str = "critical") -> list[Check]:
    """Checks for a ranking table (one row per query and rank), for the publish step.

    Every query has at least ``min_results`` rows, scores are finite (no NaN, +-inf or null), ranks
    are 1..n without gaps or repeats per query, and a product appears once per query.
    """
    gxe = _gxe()
    qc, rc, sc, pc = (f"`{c}`" for c in (query_col, rank_col, score_col, product_col))
    return [
        Check(gxe.ExpectTableRowCountToBeBetween(min_value=1), severity, name="not_empty"),
        *[Check(gxe.ExpectColumnValuesToNotBeNull(column=c), severity, name=f"not_null({c})")
          for c in (query_col, rank_col, product_col)],
        Check(gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=(f"SELECT {qc}, COUNT(*) AS results FROM {{batch}} GROUP BY {qc} "
                                   f"HAVING COUNT(*) < {int(min_results)}"),
            description=f"every query has at least {int(min_results)} results"),
            severity, name="min_results_per_query", note=f"queries with fewer than {int(min_results)} results"),
        Check(gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=(f"SELECT {qc}, {rc}, {pc}, {sc} FROM {{batch}} WHERE {sc} IS NULL OR isnan({sc}) "
                                   f"OR {sc} = double('Infinity') OR {sc} = double('-Infinity')"),
            description="scores are finite"),
            severity, name="scores_finite", note="rows with a NaN, infinite or null score"),
        Check(gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=(f"SELECT {qc}, COUNT(*) AS results, COUNT(DISTINCT {rc}) AS distinct_ranks, "
                                   f"MIN({rc}) AS min_rank, MAX({rc}) AS max_rank FROM {{batch}} GROUP BY {qc} "
                                   f"HAVING COUNT(DISTINCT {rc}) <> COUNT(*) OR MIN({rc}) <> 1 OR MAX({rc}) <> COUNT(*)"),
            description="ranks are dense (1..n) and unique per query"),
            severity, name="ranks_dense_unique", note="queries whose ranks are not exactly 1..n"),
        Check(gxe.ExpectCompoundColumnsToBeUnique(column_list=[query_col, product_col]), severity,
              name="product_once_per_query"),
    ]
