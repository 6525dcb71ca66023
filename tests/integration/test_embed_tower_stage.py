"""The image tower is its own stage: embed never trains one, and a re-run of train-image-tower on
the same inputs is a no-op (same registered version). Real Delta lake, real MLflow store/registry,
a slice of the shared fashion catalog (real titles and photos)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from mmpipeline.context import RunContext, StageError
from mmpipeline.schemas import arrow_schema, table

pytestmark = pytest.mark.slow

SMALL = {"embed.tower_epochs": 1, "embed.image_size": 32, "embed.tower_batch_size": 16,
         "embed.tower_holdout_share": 0.2, "embed.num_workers": 0, "embed.progress": False,
         "embed.image_batch_size": 16, "embed.batch_size": 32, "embed.max_text_length": 32}


def write_silver(lake, shared, n: int = 32, retitle: dict[int, str] | None = None) -> pd.DataFrame:
    df = pd.read_csv(shared / "fashion" / "products.csv")
    img_root = shared / "fashion" / "images"
    df = df[[(img_root / f"{i}.jpg").is_file() for i in df["id"]]].head(n).reset_index(drop=True)
    for k, title in (retitle or {}).items():
        df.loc[k, "title"] = title
    rows = [{"product_id": str(r.id), "title": r.title, "description": None, "brand": None,
             "category_path": r.articleType, "attributes": [], "price": None, "currency": None,
             "image_ref": f"{r.id}.jpg", "image_path": str(img_root / f"{r.id}.jpg"), "image_status": "ok",
             "image_width": None, "image_height": None, "popularity": None, "rating": None, "updated_at": None,
             "text_hash": None, "image_hash": f"h{r.id}", "run_date": dt.date(2026, 1, 1), "_batch_id": "b1"}
            for r in df.itertuples()]
    lake.merge("silver.products", pa.Table.from_pylist(rows, schema=arrow_schema(table("silver.products"))),
               delete_missing=True)
    return df


def _tower_runs(cfg) -> list:
    import mlflow

    from mmpipeline.tracking import setup_mlflow

    exp_id = setup_mlflow(cfg)
    return mlflow.search_runs([exp_id], filter_string="tags.stage = 'train-image-tower'", output_format="list")


def test_embed_never_trains_a_missing_tower(make_config, shared_datasets, tmp_path, capsys):
    """The config wants the trained tower and none is registered: embed fails with one line naming
    the train-image-tower stage, before writing anything, and no training run appears."""
    from mmpipeline.embed import job, registry

    cfg = make_config(SMALL)
    assert cfg.embed.image_model.kind == "trained-tower" and cfg.embed.embed_images
    ctx = RunContext.create(cfg, "2026-01-01")
    write_silver(ctx.lake, shared_datasets)
    with pytest.raises(StageError, match="run `mmpipeline run train-image-tower`"):
        job.run(ctx)
    assert not ctx.lake.exists("gold.product_embeddings")
    assert registry.tower_version(cfg) is None and _tower_runs(cfg) == []

    # through the CLI: exit code 1 and one line on stderr, no traceback
    from mmpipeline.cli import main

    conf = tmp_path / "c.yaml"
    conf.write_text(f"lake: {{root: {cfg.lake.root}}}\nmlflow: {{tracking_uri: '{cfg.mlflow.tracking_uri}', "
                    f"artifact_root: {cfg.mlflow.artifact_root}}}\n")
    capsys.readouterr()
    assert main(["run", "embed", "--config", str(conf), "--run-date", "2026-01-01"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmpipeline:")]
    assert len(err) == 1 and "train-image-tower" in err[0] and "embed.images_optional" in err[0]
    assert registry.tower_version(cfg) is None


def test_images_optional_then_tower_stage_then_embed(make_config, shared_datasets):
    """images_optional: a text-only run that says so; after train-image-tower the next embed run adds
    the image vectors and re-encodes no text."""
    from mmpipeline.embed import job
    from mmpipeline.embed.tower import train as tower

    cfg = make_config({**SMALL, "embed.images_optional": True})
    ctx = RunContext.create(cfg, "2026-01-01")
    products = write_silver(ctx.lake, shared_datasets)
    s1 = job.run(ctx)
    assert s1["image_model"] is None and s1["images"].startswith("skipped: no image tower registered")
    assert "product image" not in s1["tasks"] and s1["tasks"]["product text"]["encoded"] == len(products)
    assert set(ctx.lake.read_pandas("gold.product_embeddings", columns=["modality"]).modality) == {"text"}

    t = tower.run(ctx)
    assert t["trained"] is True and t["text_vectors_reused"] == len(products)  # targets from gold
    s2 = job.run(RunContext.create(cfg, "2026-01-02"))
    assert s2["tasks"]["product text"]["encoded"] == 0
    assert s2["tasks"]["product image"]["encoded"] == len(products)
    assert s2["image_model"].endswith(f"@v{t['version']}") and s2["images"] == "embedded"


def test_tower_rerun_is_a_noop_and_new_data_trains_a_new_version(make_config, shared_datasets):
    from mmpipeline.embed import registry
    from mmpipeline.embed.tower import train as tower

    cfg = make_config(SMALL)
    ctx = RunContext.create(cfg, "2026-01-01")
    write_silver(ctx.lake, shared_datasets)
    first = tower.run(ctx)
    assert first["version"] == "1"

    # same date, same inputs and config: same version, no second training run
    again = tower.run(RunContext.create(cfg, "2026-01-01"))
    assert again["version"] == "1" and again["run_id"] == first["run_id"]
    assert len(_tower_runs(cfg)) == 1
    assert first["trained"] is True and again["trained"] is False

    # killed after registering, before the alias was set: the re-run finishes the job, no training
    registry._client(cfg).delete_registered_model_alias(registry.tower_registered_name(cfg), cfg.embed.tower_alias)
    assert registry.tower_version(cfg) is None
    healed = tower.run(RunContext.create(cfg, "2026-01-01"))
    assert healed["trained"] is False and healed["version"] == "1"
    assert str(registry.tower_version(cfg).version) == "1" and len(_tower_runs(cfg)) == 1

    # a changed training knob trains (and registers) a new version
    cfg2 = make_config({**SMALL, "embed.tower_seed": 1})
    assert tower.run(RunContext.create(cfg2, "2026-01-02"))["version"] == "2"
    # a changed catalog keeps the tower (no nightly retraining and image re-embedding) ...
    write_silver(ctx.lake, shared_datasets, retitle={3: "a completely new title"})
    kept = tower.run(RunContext.create(cfg2, "2026-01-03"))
    assert kept["version"] == "2" and kept["trained"] is False and "--full-refresh" in kept["skipped"]
    # ... until a full refresh retrains it on the current catalog
    assert tower.run(RunContext.create(cfg2, "2026-01-03", full_refresh=True))["version"] == "3"
    assert str(registry.tower_version(cfg).version) == "3" and len(_tower_runs(cfg)) == 3
    # and a full-refresh re-run of the same date is a no-op again
    assert tower.run(RunContext.create(cfg2, "2026-01-03", full_refresh=True))["version"] == "3"
    assert len(_tower_runs(cfg)) == 3


def test_tower_stage_is_a_noop_when_images_are_off(make_config):
    from mmpipeline.embed import registry
    from mmpipeline.embed.tower import train as tower

    for overrides in ({"embed.embed_images": False},
                      {"embed.image_model.kind": "torchvision", "embed.image_model.name": "resnet18"}):
        cfg = make_config(overrides)
        s = tower.run(RunContext.create(cfg, "2026-01-01"))  # no silver tables needed: nothing to do
        assert s["trained"] is False and s["skipped"].startswith("no image tower needed")
        assert registry.tower_version(cfg) is None
