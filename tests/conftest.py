"""Shared fixtures: one real local SparkSession per test session, real Delta lakes in tmp dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("MMP_DATASETS", REPO.parent / "shared" / "datasets"))

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session")
def spark():
    from mmpipeline.spark import get_spark

    s = get_spark()
    yield s


@pytest.fixture()
def make_config(tmp_path):
    """Build a Config rooted in tmp_path: ``make_config(sources={...}, **section_overrides)``."""
    from mmpipeline.config import load_config

    def _make(overrides: dict | None = None, path: str | os.PathLike | None = None):
        base = {
            "lake.root": str(tmp_path / "lake"),
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "mlflow.artifact_root": str(tmp_path / "mlartifacts"),
            "spark.master": "local[2]",
        }
        base.update(overrides or {})
        return load_config(path, base, env={})

    return _make


@pytest.fixture()
def shared_datasets():
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"sample datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
