"""The one config object: YAML + env overrides + --set overrides, paths resolved against the file."""

import datetime as dt
from pathlib import Path

import pytest
from pydantic import ValidationError

from mmpipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    for name in ("homedepot", "fashion"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml", env={})
        assert cfg.name == name
        assert Path(cfg.lake.root).is_absolute()
        assert cfg.mlflow.tracking_uri.startswith("sqlite:////")
        assert cfg.sources["products"].path.endswith(".csv")
        assert Path(cfg.sources["products"].path).is_absolute()


def test_env_and_set_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nlake: {root: lake}\nembed: {batch_size: 8}\n"
                 "sources:\n  products: {path: '${DATA:-data}/p.csv', columns: {product_id: id}}\n")
    cfg = load_config(f, ["embed.device=cpu", "run_date=2024-05-01"],
                      env={"MMP__EMBED__BATCH_SIZE": "16", "DATA": "/data"})
    assert cfg.embed.batch_size == 16  # env beats the file
    assert cfg.embed.device == "cpu"
    assert cfg.run_date == dt.date(2024, 5, 1)
    assert cfg.lake.root == str(tmp_path / "lake")
    assert cfg.sources["products"].path == "/data/p.csv"
    assert load_config(f, env={}).sources["products"].path == str(tmp_path / "data" / "p.csv")


def test_bad_config_is_a_clear_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("embed: {batch_sise: 8}\n")
    with pytest.raises(ValidationError, match="batch_sise"):
        load_config(f, env={})
    f.write_text("sources: {catalog: {path: x}}\n")
    with pytest.raises(ValidationError, match="unknown source"):
        load_config(f, env={})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml", env={})
