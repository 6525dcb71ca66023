"""Keeping validation results: ``ops.validation`` rows per run date and table (lake I/O)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from mmpipeline.validate.checks import ValidationReport

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.lake import Lake

log = logging.getLogger(__name__)


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
