"""Great Expectations results as readable text and plain JSON, pure (dicts in, strings out).

:func:`format_observed` turns GE's result dict of one expectation into the short "observed" text
that reports, logs and ``ops.validation`` show; :func:`plain` makes GE's kwargs/result dicts
(enums, numpy scalars, row conditions) JSON-able.
"""

from __future__ import annotations

import json
from typing import Any


def to_json(obj: Any) -> str:
    return json.dumps(obj, default=str, sort_keys=True)


def short(v: Any, n: int = 160) -> str:
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
            s += f", e.g. {short(result['partial_unexpected_list'][:5])}"
        return s
    obs = result.get("observed_value")
    details = result.get("details") or {}
    if exp_type == "unexpected_rows_expectation":
        s = f"{obs:,} unexpected row(s)" if isinstance(obs, int) else f"{obs} unexpected row(s)"
        rows = details.get("unexpected_rows") if isinstance(details, dict) else None
        if obs and rows:
            s += f", e.g. {short(rows[:3])}"
        return s
    if isinstance(details, dict) and details.get("mismatched"):
        mm = details["mismatched"]
        parts = [f"{k}: {v}" for k, v in mm.items() if v]
        return f"{short(obs)} ({'; '.join(parts)})" if parts else short(obs)
    if isinstance(obs, float):
        return f"{obs:.6g}"
    if isinstance(obs, int) and not isinstance(obs, bool):
        return f"{obs:,}"
    return short(obs)


def plain(obj: Any) -> Any:
    """GE result/kwargs dicts as plain JSON-able Python (enums, numpy scalars, Conditions -> str)."""
    return json.loads(to_json(_to_jsonable(obj)))


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
