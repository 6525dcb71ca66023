"""rank.train reads the training data's input versions from the commit metadata, whichever engine
wrote the commit (delta-rs: top-level custom keys; delta-spark: a JSON string under userMetadata)."""

import datetime as dt
import json

import pandas as pd
import pytest

from mmpipeline.config import load_config
from mmpipeline.context import RunContext
from mmpipeline.schemas import table

D = dt.date(2026, 3, 1)
VERSIONS = {"silver.products": 4, "gold.product_embeddings": 2, "gold.query_embeddings": 1}


def _frame() -> pd.DataFrame:
    cols = table("gold.training_data").column_names
    row = {c: None for c in cols}
    row.update(run_date=D, query_id="q1", product_id="p1", grade=2.0, label=0.66, source="judgment", split="train")
    return pd.DataFrame([row], columns=cols)


@pytest.mark.parametrize("shape", ["delta-rs", "delta-spark"])
def test_training_data_input_versions_from_either_engines_commit_metadata(tmp_path, shape):
    from mmpipeline.rank.train import read_training_data

    cfg = load_config(None, {"lake.root": str(tmp_path / "lake"), "lake.engine": "delta-rs"}, env={})
    ctx = RunContext.create(cfg, D)
    meta = {"mmp_run_date": str(D), "mmp_input_versions": json.dumps(VERSIONS)}
    if shape == "delta-spark":  # what delta-spark's writer option userMetadata leaves in the commit info
        meta = {"userMetadata": json.dumps(meta)}
    ctx.lake.write("gold.training_data", _frame(), mode="overwrite", partition={"run_date": D}, metadata=meta)
    _, _, got = read_training_data(ctx)
    assert got["input_versions"] == VERSIONS
