"""MLflow wiring shared by every stage that tracks runs or uses the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from mmpipeline.config import Config


def setup_mlflow(cfg: "Config") -> str:
    """Point MLflow at the configured tracking and registry stores, make the configured experiment
    current (created with the configured artifact root when missing) and return its id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow.registry_uri or cfg.mlflow.tracking_uri)
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        loc = cfg.mlflow.artifact_root
        if loc and "://" not in loc:
            Path(loc).mkdir(parents=True, exist_ok=True)
            loc = Path(loc).resolve().as_uri()
        try:
            exp_id = mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=loc)
        except Exception:  # noqa: BLE001 - created concurrently by another stage
            exp_id = mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def client(cfg: "Config") -> "MlflowClient":
    """An MlflowClient bound explicitly to the configured stores (never to global state)."""
    from mlflow import MlflowClient

    setup_mlflow(cfg)
    return MlflowClient(tracking_uri=cfg.mlflow.tracking_uri,
                        registry_uri=cfg.mlflow.registry_uri or cfg.mlflow.tracking_uri)
