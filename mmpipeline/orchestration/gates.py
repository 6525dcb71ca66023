"""Input gates: a DAG run whose inputs did not change since its last successful run skips cleanly.

A gated DAG (ranker, scoring) starts with ``check_inputs`` after ``resolve_run`` and ends with
``record_inputs``. ``check_inputs`` computes the **input fingerprint** of the run -- the lake tables
behind the DAG's external input assets (:func:`mmpipeline.stages.external_inputs`), the registered
model version behind a model asset's alias, and the DAG's config section -- and compares it with
the one ``record_inputs`` stored after the DAG's last successful run. Equal (and, for scoring, the
same run date): the task is skipped with a one-line reason, so every stage after it is skipped and
nothing is written or emitted. ``force=true`` (or ``full_refresh``) in the trigger runs anyway.

A table's fingerprint is the set of data files of its current Delta snapshot (their names are
unique per write): a merge that changes nothing keeps it, any write that changes rows changes it.
The check is conservative: a rewrite of identical rows into new files counts as a change (a
run that was not needed), never the other way round (a skip that was needed).

A DAG may itself write an input table (the ranker's ``reembed-text`` re-embeds the text vectors with
a text tower promoted in the same run): ``record_inputs`` then records that table as the run left it,
but only when every commit since ``check_inputs`` came from one of the DAG's own stages (commit
metadata ``stage``); a write by anything else in between keeps the checked fingerprint, so the next
run goes ahead.

The state is one JSON file per DAG under the lake root (``<lake>/_orchestration/<dag_id>.json``),
written atomically; deleting it makes the next run of the DAG run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mmpipeline.stages import RANKER_DAG, SCORING_DAG, dag_stages, external_inputs

log = logging.getLogger("mmpipeline.airflow")

# The config section whose settings are part of each gated DAG's inputs.
SETTINGS: dict[str, tuple[str, ...]] = {RANKER_DAG: ("rank",), SCORING_DAG: ("score",)}
# Gated DAGs: whether a recorded run only counts for the same run date (a new date is new work).
PER_RUN_DATE: dict[str, bool] = {RANKER_DAG: False, SCORING_DAG: True}
STATE_DIR = "_orchestration"


@dataclass(frozen=True)
class GateDecision:
    run: bool
    reason: str  # one line


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def table_fingerprint(uri: str | Path) -> str:
    """The data files of a Delta table's current snapshot, hashed; ``absent`` when there is no table."""
    if not (Path(uri) / "_delta_log").is_dir():
        return "absent"
    from deltalake import DeltaTable

    files = sorted(f.rsplit("/", 1)[-1] if "/" in f else f for f in DeltaTable(str(uri)).file_uris())
    return _digest(files)


def input_components(cfg: Any, dag_id: str, model_alias: str | None = None,
                     model_version: Callable[[Any, str], str | None] | None = None) -> dict[str, str]:
    """What a run of ``dag_id`` reads, one fingerprint per table / model alias / config section."""
    from mmpipeline.lake import Lake

    lake = Lake(cfg.lake.root, engine="delta-rs")
    out: dict[str, str] = {}
    for asset in external_inputs(dag_id):
        for table in asset.tables:
            out[table] = table_fingerprint(lake.uri(table))
        if asset.model_alias:
            alias = model_alias or cfg.score.model_alias or asset.model_alias
            try:
                version = (model_version or registered_version)(cfg, alias)
            except Exception as e:  # noqa: BLE001 - the stage will report an unreachable registry itself
                version = f"unavailable ({type(e).__name__})"
            out[f"model@{alias}"] = str(version)
    dump = cfg.model_dump(mode="json")
    for section in SETTINGS.get(dag_id, ()):
        out[f"config.{section}"] = _digest(dump.get(section))
    return out


def registered_version(cfg: Any, alias: str) -> str | None:
    """The version of the configured ranker behind ``alias`` in the MLflow registry (None: no such alias)."""
    from mlflow.exceptions import MlflowException

    from mmpipeline.tracking import client

    try:
        mv = client(cfg).get_model_version_by_alias(cfg.mlflow.model_name, alias)
    except MlflowException:  # no such model or alias
        return None
    return str(mv.version)


def table_version(uri: str | Path) -> int | None:
    if not (Path(uri) / "_delta_log").is_dir():
        return None
    from deltalake import DeltaTable

    return int(DeltaTable(str(uri)).version())


def input_versions(cfg: Any, dag_id: str) -> dict[str, int | None]:
    """The Delta version of each input table (what :func:`own_writes` compares with after the run)."""
    from mmpipeline.lake import Lake

    lake = Lake(cfg.lake.root, engine="delta-rs")
    return {t: table_version(lake.uri(t)) for a in external_inputs(dag_id) for t in a.tables}


def own_writes(checked: Mapping[str, Any], dag_id: str) -> dict[str, str]:
    """The checked components, with each input table that only the DAG's own stages wrote since the
    check (commit metadata ``stage``) replaced by its fingerprint now: the inputs the run left behind."""
    from deltalake import DeltaTable

    from mmpipeline.lake import normalise_commit

    components = dict(checked["components"])
    root, own = Path(checked["lake_root"]), {s.name for s in dag_stages(dag_id)}
    for table, before in (checked.get("versions") or {}).items():
        uri = root.joinpath(*table.split("."))
        now = table_version(uri)
        if now is None or before is None or now <= before:
            continue
        commits = [normalise_commit(h) for h in DeltaTable(str(uri)).history(now - before)]
        if len(commits) == now - before and all(c["metadata"].get("stage") in own for c in commits):
            components[table] = table_fingerprint(uri)
            log.info("record_inputs: %s was written by this run (%s): recorded as it is now", table,
                     ", ".join(sorted({c["metadata"]["stage"] for c in commits})))
    return components


def fingerprint(components: Mapping[str, str]) -> str:
    return _digest(dict(components))


def state_path(lake_root: str | Path, dag_id: str) -> Path:
    return Path(lake_root) / STATE_DIR / f"{dag_id}.json"


def read_state(lake_root: str | Path, dag_id: str) -> dict[str, Any] | None:
    p = state_path(lake_root, dag_id)
    try:
        state = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("ignoring an unreadable gate state %s (the run goes ahead)", p)
        return None
    return state if isinstance(state, dict) else None


def write_state(lake_root: str | Path, dag_id: str, state: Mapping[str, Any]) -> Path:
    """Atomically replace the DAG's recorded state (write a temp file, then rename)."""
    p = state_path(lake_root, dag_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(state), indent=2, sort_keys=True, default=str))
    os.replace(tmp, p)
    return p


def decide(dag_id: str, components: Mapping[str, str], run_date: str, state: Mapping[str, Any] | None,
           force: bool = False) -> GateDecision:
    """Pure: run or skip, with the one-line reason."""
    if force:
        return GateDecision(True, "forced by the trigger (force=true): running whatever the inputs")
    if not state or "components" not in state:
        return GateDecision(True, "no earlier successful run recorded for these inputs")
    old = dict(state.get("components") or {})
    changed = sorted(k for k in set(old) | set(components) if old.get(k) != components.get(k))
    when = f"run {state.get('dag_run_id', '?')} for run date {state.get('run_date', '?')}"
    if PER_RUN_DATE.get(dag_id) and str(state.get("run_date")) != str(run_date):
        why = f"changed since: {', '.join(changed)}" if changed else "same inputs"
        return GateDecision(True, f"run date {run_date} not done yet (last: {when}; {why})")
    if changed:
        return GateDecision(True, f"inputs changed since {when}: {', '.join(changed)}")
    if dag_id == SCORING_DAG:
        return GateDecision(False, f"run date {run_date} was already scored and published from the same inputs "
                                   f"({when}); nothing to do (trigger with force=true to run anyway)")
    return GateDecision(False, f"nothing changed since the last trained model ({when}): same input tables, "
                               f"model and settings; nothing to do (trigger with force=true to run anyway)")


def check(resolved: Mapping[str, Any], dag_id: str,
          model_version: Callable[[Any, str], str | None] | None = None) -> dict[str, Any]:
    """Body of ``check_inputs``: the decision and the fingerprint ``record_inputs`` stores later."""
    from mmpipeline.config import load_config

    cfg = load_config(resolved["config"], list(resolved.get("overrides") or []))
    versions = input_versions(cfg, dag_id)  # before the fingerprints: a write in between is never taken as ours
    components = input_components(cfg, dag_id, resolved.get("model_alias"), model_version)
    state = read_state(cfg.lake.root, dag_id)
    force = bool(resolved.get("force") or resolved.get("full_refresh"))  # a full refresh recomputes everything
    decision = decide(dag_id, components, str(resolved["run_date"]), state, force)
    return {"run": decision.run, "reason": decision.reason, "fingerprint": fingerprint(components),
            "components": components, "versions": versions, "lake_root": str(cfg.lake.root)}


def record(checked: Mapping[str, Any], dag_id: str, run_date: str, dag_run_id: str) -> Path:
    """Body of ``record_inputs`` (after the DAG's last stage succeeded)."""
    components = own_writes(checked, dag_id)
    return write_state(checked["lake_root"], dag_id, {
        "dag_id": dag_id, "run_date": str(run_date), "dag_run_id": dag_run_id,
        "fingerprint": fingerprint(components), "components": components,
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
