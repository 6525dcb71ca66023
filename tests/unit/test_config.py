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


def test_config_mistakes_are_described_in_one_line(tmp_path):
    from mmpipeline.config import ConfigError, describe_config_error

    f = tmp_path / "c.yaml"
    f.write_text("clean: {max_delete_shar: 0.2}\nembed: {batch_size: many}\n")
    with pytest.raises(ValidationError) as e:
        load_config(f, env={})
    line = describe_config_error(e.value, f)
    assert "\n" not in line and line.startswith(f"config {f}: ")
    assert "clean.max_delete_shar: unknown key" in line and "embed.batch_size: Input should be a valid integer" in line
    f.write_text("lake: [unclosed\n")
    with pytest.raises(Exception) as e:
        load_config(f, env={})
    assert "is not valid YAML" in describe_config_error(e.value, f)
    cfg = load_config(None, env={})
    with pytest.raises(ConfigError, match="run date '2026-13-45' is not a valid date.*YYYY-MM-DD"):
        cfg.effective_run_date("2026-13-45")
    with pytest.raises(ConfigError, match="--set takes section.key=value"):
        load_config(None, ["clean.max_delete_share"], env={})
    assert describe_config_error(RuntimeError("x")) is None
