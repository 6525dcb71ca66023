"""MLflow tracking/registry set-up and loading the registered ranker by alias."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpipeline.tracking import client, setup_mlflow  # noqa: F401 (re-exported for the rank modules)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mmpipeline.config import Config

log = logging.getLogger(__name__)


def alias_version(cfg: "Config", alias: str, name: str | None = None):
    """The registered model version behind ``alias`` (None when the alias or model is absent)."""
    from mlflow.exceptions import MlflowException

    try:
        return client(cfg).get_model_version_by_alias(name or cfg.mlflow.model_name, alias)
    except MlflowException:
        return None


@dataclass
class LoadedRanker:
    """A registered ranker version: ``predict(features_df) -> np.ndarray`` (one score per row)."""

    name: str
    version: str
    run_id: str
    alias: str | None
    pyfunc: Any

    def predict(self, df: "pd.DataFrame") -> np.ndarray:
        try:  # our own wrapper: skip per-row schema enforcement (same code path, much faster)
            inner = self.pyfunc.unwrap_python_model()
            if hasattr(inner, "model") and inner.model is not None:
                return np.asarray(inner.predict(None, df), dtype=np.float64)
        except Exception:  # pragma: no cover - a foreign pyfunc model
            pass
        return np.asarray(self.pyfunc.predict(df), dtype=np.float64).reshape(-1)

    @property
    def model(self):
        """The underlying torch module (for inspection)."""
        return self.pyfunc.unwrap_python_model().model


def load_ranker(cfg: "Config", alias: str = "champion", name: str | None = None) -> LoadedRanker:
    """Load ``models:/<name>@<alias>``; raises LookupError when no version carries the alias."""
    import mlflow

    name = name or cfg.mlflow.model_name
    mv = alias_version(cfg, alias, name)
    if mv is None:
        raise LookupError(f"no version of registered model {name!r} has alias {alias!r} "
                          f"(run 'mmpipeline run train' and 'mmpipeline run evaluate' first)")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    log.info("loaded ranker %s version %s (alias %s, run %s)", name, mv.version, alias, mv.run_id)
    return LoadedRanker(name=name, version=str(mv.version), run_id=mv.run_id, alias=alias, pyfunc=pyfunc)


def load_version(cfg: "Config", version: str | int, name: str | None = None) -> LoadedRanker:
    import mlflow

    name = name or cfg.mlflow.model_name
    mv = client(cfg).get_model_version(name, str(version))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return LoadedRanker(name=name, version=str(mv.version), run_id=mv.run_id, alias=None, pyfunc=pyfunc)
