"""Run resolution: the trigger's params, the upstream asset event and the dates -> the stage arguments.

Pure (standard library only): :func:`resolve_run_args` is what the ``resolve_run`` task of every DAG
computes; each stage task then runs ``mmpipeline run STAGE <argv>``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

from mmpipeline.stages import STAGES, TRIGGER_PARAMS

log = logging.getLogger("mmpipeline.airflow")


def _repo_root() -> Path:
    """``MMP_HOME`` (jobs/ and configs/ live there), else the checkout this package sits in."""
    if os.environ.get("MMP_HOME"):
        return Path(os.environ["MMP_HOME"])
    here = Path(__file__).resolve().parents[2]
    return here if (here / "jobs").is_dir() else Path.cwd()


REPO_ROOT = _repo_root()
DEFAULT_CONFIG = os.environ.get("MMP_CONFIG", "configs/homedepot.yaml")
CONFIG_VARIABLE = "mmp_config"  # Airflow Variable: default config file when the trigger names none


def as_date(value: Any) -> str | None:
    """A date, datetime (UTC date) or 'YYYY-MM-DD...' string as 'YYYY-MM-DD'; None for empty."""
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).date().isoformat() if value.tzinfo else value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise ValueError(f"run_date must be YYYY-MM-DD, got {value!r}") from None


def stage_argv_key(task_id: str) -> str:
    """Key of a stage's own argument list in the resolved run (stages that take extra trigger params)."""
    return f"argv_{task_id}"


def resolve_run_args(params: Mapping[str, Any], *, logical_date: Any = None, run_after: Any = None,
                     upstream: Iterable[Mapping[str, Any]] = (), variable_config: str | None = None,
                     default_config: str = DEFAULT_CONFIG, repo_root: Path = REPO_ROOT,
                     today: dt.date | None = None) -> dict[str, Any]:
    """Pure function: trigger params + dates (+ upstream asset-event extras) -> the stage arguments.

    Precedence: explicit param > upstream asset event (asset-triggered runs) > Variable > default.
    ``argv`` is what every stage gets; a stage that accepts extra trigger params (``force``,
    ``allow_empty_source``: see ``Stage.trigger_params``) gets ``argv_<task_id>`` with them added.
    """
    upstream = [u for u in upstream if isinstance(u, Mapping) and (u.get("config") or u.get("run_date"))]
    latest = upstream[-1] if upstream else {}
    config = params.get("config") or latest.get("config") or variable_config or default_config
    path = Path(str(config)).expanduser()
    if not path.is_absolute():
        path = (repo_root / path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (set the 'config' param of the trigger, "
                                f"or the Airflow Variable '{CONFIG_VARIABLE}')")
    run_date = (as_date(params.get("run_date")) or as_date(latest.get("run_date")) or as_date(logical_date)
                or as_date(run_after) or (today or dt.datetime.now(dt.timezone.utc).date()).isoformat())
    full_refresh = bool(params.get("full_refresh"))
    model_alias = params.get("model_alias") or None
    overrides = [str(o) for o in (params.get("overrides") or [])]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must be KEY=VALUE, got {bad}")
    flags = {k: bool(params.get(k)) for k in TRIGGER_PARAMS}
    argv = ["--config", str(path), "--run-date", run_date]
    if full_refresh:
        argv.append("--full-refresh")
    if model_alias:
        argv += ["--model-alias", str(model_alias)]
    for o in overrides:
        argv += ["--set", o]
    out: dict[str, Any] = {
        "config": str(path), "run_date": run_date, "full_refresh": full_refresh, "model_alias": model_alias,
        "overrides": overrides, **flags, "argv": argv, "cli": "mmpipeline run STAGE " + shlex.join(argv),
    }
    for st in STAGES.values():
        if st.trigger_params:
            extra = [a for p in st.trigger_params if flags.get(p) for a in TRIGGER_PARAMS[p]]
            out[stage_argv_key(st.task_id)] = argv + extra
    return out


def stage_argv(resolved: Mapping[str, Any], task_id: str) -> list[str]:
    """The argument list of the stage behind ``task_id`` in a resolved run."""
    return list(resolved.get(stage_argv_key(task_id)) or resolved.get("argv") or [])


def upstream_extras(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Extras of the asset events that triggered this run (oldest first); empty for other runs."""
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        events = context.get("triggering_asset_events") or {}
        for evs in events.values():
            for ev in evs:
                out.append((str(getattr(ev, "timestamp", "")), dict(getattr(ev, "extra", None) or {})))
    except Exception as e:  # never let a lookup of optional metadata fail the run
        log.warning("could not read triggering asset events: %s", e)
    return [e for _, e in sorted(out, key=lambda x: x[0])]


def brings_news(extra: Mapping[str, Any]) -> bool:
    """False only for an evaluation event that kept the previous champion (nothing new to score)."""
    summary = extra.get("summary") or {}
    return not (isinstance(summary, Mapping) and summary.get("promoted") is False)
