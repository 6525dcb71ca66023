"""``mmpipeline bench embed``: embed-job throughput against plain baselines, in one run.

(a) text: the job's encoder path (``TextEncoder.encode``: length-sorted batches, truncation,
    autocast, normalisation) against a bare ``SentenceTransformer.encode`` loop over the same
    texts with the same batch size -> ``ratio`` = job items/s / bare items/s;
(b) images: the job's path (``encode_image_paths``: DataLoader workers decoding + the configured
    image encoder) against a bare torchvision ``DataLoader`` (PIL + ``transforms``) + the same
    model, same batch size and workers -> ratio;
(c) incremental: the embed stage on a copy of ``n_products`` products in a scratch lake, full run,
    then again after changing ``change_share`` of the products (titles and image content hashes):
    items encoded and wall time of each run. ``spark=true`` also times a full run with
    ``embed.engine: spark`` (executors read, plan, encode and write) against the local engine;
(d) ``stage_over_bare``: items/s of the whole stage's product-text task (plan, model load, encode,
    the merge commit) over the bare loop's items/s of (a), per engine.

Data: ``silver.products`` of the config's lake (run ingest + clean first). Without a config (or
an empty lake) the products come from ``params.products_csv`` / ``params.image_dir`` (default: the
fashion sample under ``../shared/datasets``), mapped with the fashion column names.

Params: n_texts (2000), n_images (1000), n_products (1000), change_share (0.01), repeats (1),
spark (false), incremental (true), text (true), images (true).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def _products_from_csv(csv: Path, image_dir: Path, n: int) -> pd.DataFrame:
    """silver.products rows from a fashion-style CSV (id, title, master/sub category, article type)."""
    df = pd.read_csv(csv, nrows=n)
    rows = []
    for r in df.itertuples():
        p = image_dir / f"{r.id}.jpg"
        ok = p.is_file()
        rows.append({"product_id": str(r.id), "title": str(r.title), "description": None, "brand": None,
                     "category_path": " > ".join(str(x) for x in (getattr(r, "masterCategory", ""),
                                                                  getattr(r, "subCategory", ""),
                                                                  getattr(r, "articleType", ""))),
                     "attributes": [], "price": None, "currency": None, "image_ref": f"{r.id}.jpg",
                     "image_path": str(p) if ok else None, "image_status": "ok" if ok else "missing",
                     "image_width": None, "image_height": None, "popularity": None, "rating": None,
                     "updated_at": None, "text_hash": hashlib.sha1(str(r.title).encode()).hexdigest(),
                     "image_hash": None, "run_date": dt.date(2026, 1, 1), "_batch_id": "bench"})
    return pd.DataFrame(rows)


def _silver_slice(cfg, params: dict[str, Any], n: int):
    """(silver.products arrow table of up to n rows, source description)."""
    import pyarrow as pa

    from mmpipeline.lake import Lake
    from mmpipeline.schemas import arrow_schema, table

    if cfg is not None:
        lake = Lake.from_config(cfg)
        if lake.exists("silver.products"):
            t = lake.read_arrow("silver.products")
            t = t.sort_by("product_id").slice(0, n)
            return t, f"silver.products of {cfg.lake.root}"
    shared = Path(params.get("datasets", REPO.parent / "shared" / "datasets"))
    csv = Path(params.get("products_csv", shared / "fashion" / "products.csv"))
    img = Path(params.get("image_dir", shared / "fashion" / "images"))
    if not csv.is_file():
        raise SystemExit(f"bench embed: no silver.products in the config's lake and no CSV at {csv}")
    pdf = _products_from_csv(csv, img, n)
    return pa.Table.from_pylist(pdf.to_dict("records"), schema=arrow_schema(table("silver.products"))), str(csv)


def _scratch_cfg(cfg, root: Path, **embed: Any):
    from mmpipeline.config import Config

    c = copy.deepcopy(cfg) if cfg is not None else Config()
    c.lake.root = str(root / "lake")
    if cfg is None:
        c.mlflow.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        c.mlflow.artifact_root = str(root / "mlartifacts")
    c.embed.progress = False
    for k, v in embed.items():
        setattr(c.embed, k, v)
    return c


def _image_spec(cfg):
    """The configured image encoder; the tower's architecture untrained when no tower is registered
    (same network, same cost) so the bench never trains."""
    from mmpipeline.embed import models

    try:
        return models.image_spec(cfg), "configured"
    except Exception as e:  # noqa: BLE001 - no tower registered: same architecture, random init
        log.info("bench: %s; using torchvision %s (random init) for the image path", e, cfg.embed.image_model.name)
        c = copy.deepcopy(cfg)
        c.embed.image_model.kind = "torchvision"
        c.embed.image_model.weights = None
        return models.image_spec(c), "torchvision stand-in (no tower registered)"


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_text(cfg, texts: list[str], repeats: int) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    from mmpipeline.embed import models
    from mmpipeline.embed.encoders import build_encoder

    spec = models.text_spec(cfg)
    enc = build_encoder(spec)
    enc.encode(texts[:32])  # warm-up
    job_s = _best(lambda: enc.encode(texts), repeats)
    out: dict[str, Any] = {"model": f"{spec.name}@{spec.version}", "kind": spec.kind, "n": len(texts),
                           "batch_size": spec.batch_size, "device": enc.device, "dtype": spec.dtype,
                           "job_seconds": round(job_s, 3), "job_items_per_s": round(len(texts) / job_s, 1)}
    if spec.kind != "sentence-transformers":
        out["baseline"] = "n/a (text model is not a sentence-transformers model)"
        return out
    bare = SentenceTransformer(spec.source, device=enc.device)
    bare.max_seq_length = spec.max_length
    bare.encode(texts[:32], batch_size=spec.batch_size)
    bare_s = _best(lambda: bare.encode(texts, batch_size=spec.batch_size, normalize_embeddings=True,
                                       show_progress_bar=False), repeats)
    a = enc.encode(texts[:64])
    b = bare.encode(texts[:64], batch_size=spec.batch_size, normalize_embeddings=True)
    out.update({"bare_seconds": round(bare_s, 3), "bare_items_per_s": round(len(texts) / bare_s, 1),
                "ratio_job_over_bare": round(bare_s / job_s, 3),
                "max_abs_diff_vs_bare": float(np.abs(a - b).max())})
    return out


class _BareImages:
    """The plain baseline: PIL open + torchvision transforms, nothing else."""

    def __init__(self, paths, size, mean, std):
        from torchvision import transforms

        self.paths = paths
        self.tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                      transforms.Normalize(mean, std)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.tf(img.convert("RGB"))


def bench_images(cfg, paths: list[str], repeats: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from mmpipeline.embed.encoders import build_encoder, encode_image_paths
    from mmpipeline.embed.runtime import autocast

    spec, which = _image_spec(cfg)
    enc = build_encoder(spec)
    workers = cfg.embed.num_workers
    encode_image_paths(enc, paths[:spec.batch_size])  # warm-up
    job_s = _best(lambda: encode_image_paths(enc, paths, workers), repeats)
    model = enc.model
    tf = enc.transform

    def bare():
        loader = DataLoader(_BareImages(paths, tf.size, tf.mean, tf.std), batch_size=spec.batch_size,
                            num_workers=workers, pin_memory=enc.device == "cuda")
        with torch.inference_mode(), autocast(enc.device, spec.dtype):
            for x in loader:
                enc._forward(x.to(enc.device))

    bare_s = _best(bare, repeats)
    return {"model": f"{spec.name}@{spec.version}", "encoder": which, "kind": spec.kind, "n": len(paths),
            "image_size": tf.size, "batch_size": spec.batch_size, "num_workers": workers, "device": enc.device,
            "job_seconds": round(job_s, 3), "job_items_per_s": round(len(paths) / job_s, 1),
            "bare_seconds": round(bare_s, 3), "bare_items_per_s": round(len(paths) / bare_s, 1),
            "ratio_job_over_bare": round(bare_s / job_s, 3)}


def _run_embed(cfg, run_date: str, full_refresh: bool = False) -> tuple[dict[str, Any], float]:
    from mmpipeline.context import RunContext
    from mmpipeline.embed import job

    ctx = RunContext.create(cfg, run_date, full_refresh=full_refresh)
    t0 = time.perf_counter()
    s = job.run(ctx)
    return s, time.perf_counter() - t0


def _image_kind_for_bench(cfg) -> dict[str, Any]:
    _, which = _image_spec(cfg)
    if which == "configured":
        return {}
    from mmpipeline.config import EmbedModelConfig

    return {"image_model": EmbedModelConfig(kind="torchvision", name=cfg.embed.image_model.name)}


def bench_incremental(cfg, silver, change_share: float, root: Path, spark: bool) -> dict[str, Any]:
    import pyarrow as pa

    from mmpipeline.lake import Lake

    c = _scratch_cfg(cfg, root / "incr", **_image_kind_for_bench(cfg))
    lake = Lake.from_config(c)
    lake.merge("silver.products", silver)
    full, full_s = _run_embed(c, "2026-01-01")
    # change change_share of the products: new title text and a new image content hash
    n = silver.num_rows
    k = max(1, round(n * change_share))
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(n, size=k, replace=False))
    df = silver.to_pandas()
    df.loc[idx, "title"] = df.loc[idx, "title"].astype(str) + " (new season)"
    for i in idx:
        if df.at[i, "image_status"] == "ok":
            df.at[i, "image_hash"] = f"changed-{i}"
    lake.merge("silver.products", pa.Table.from_pandas(df, schema=silver.schema, preserve_index=False))
    second, second_s = _run_embed(c, "2026-01-02")
    third, third_s = _run_embed(c, "2026-01-03")
    pt = full["tasks"]["product text"]
    out = {"n_products": n, "changed_products": k,
           "full_run": {"encoded": full["encoded"], "seconds": round(full_s, 2),
                        "product_text": {k2: pt[k2] for k2 in ("encoded", "distinct_encoded", "seconds", "items_per_s")}},
           "after_change": {"encoded": second["encoded"], "reused": second["reused"], "seconds": round(second_s, 2)},
           "identical_rerun": {"encoded": third["encoded"], "seconds": round(third_s, 2)},
           "encoded_ratio": round(second["encoded"] / max(full["encoded"], 1), 4),
           "time_ratio": round(second_s / full_s, 4) if full_s else None}
    if spark:
        cs = _scratch_cfg(cfg, root / "spark", engine="spark", **_image_kind_for_bench(cfg))
        Lake.from_config(cs).merge("silver.products", silver)
        sfull, sfull_s = _run_embed(cs, "2026-01-01")
        spt = sfull["tasks"]["product text"]
        out["engines"] = {"local_full_seconds": round(full_s, 2), "spark_full_seconds": round(sfull_s, 2),
                          "spark_encoded": sfull["encoded"],
                          "spark_product_text": {k2: spt[k2] for k2 in ("encoded", "distinct_encoded", "seconds",
                                                                          "items_per_s")},
                          "local_speedup_over_spark": round(sfull_s / full_s, 3) if full_s else None}
    return out


def main(cfg, params: dict[str, Any]) -> dict[str, Any]:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bench is an edge entry point like the CLI
    from mmpipeline.config import Config
    from mmpipeline.embed.data import build_text

    base = cfg if cfg is not None else Config()
    n_texts, n_images = int(params.get("n_texts", 2000)), int(params.get("n_images", 1000))
    n_products = int(params.get("n_products", 1000))
    repeats = int(params.get("repeats", 1))
    need = max(n_texts, n_products, int(n_images * 1.6))
    silver, source = _silver_slice(cfg, params, need)
    pdf = silver.select(["product_id", *base.embed.product_text_fields, "image_path", "image_status"]).to_pandas()
    texts = [build_text(v) for v in zip(*(pdf[f].tolist() for f in base.embed.product_text_fields))]
    texts = [t for t in texts if t][:n_texts]
    paths = pdf.loc[(pdf["image_status"] == "ok") & pdf["image_path"].notna(), "image_path"].tolist()[:n_images]
    import torch

    result: dict[str, Any] = {"source": source, "torch_threads": torch.get_num_threads(),
                              "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="mmp-bench-embed-") as tmp:
        scratch = _scratch_cfg(cfg, Path(tmp))
        if params.get("text", True) and texts:
            result["text"] = bench_text(scratch, texts, repeats)
        if params.get("images", True) and paths:
            result["images"] = bench_images(scratch, paths, repeats)
        if params.get("incremental", True):
            result["incremental"] = bench_incremental(cfg if cfg is not None else scratch,
                                                      silver.slice(0, n_products), float(params.get("change_share", 0.01)),
                                                      Path(tmp), bool(params.get("spark", False)))
    # the whole stage's product-text task (plan, model load, encode, one merge commit) against the bare
    # model loop on the same texts: what the job really delivers per second
    bare = result.get("text", {}).get("bare_items_per_s")
    inc = result.get("incremental", {})
    if bare and inc:
        result["stage_over_bare"] = {"local": round(inc["full_run"]["product_text"]["items_per_s"] / bare, 3)}
        if "engines" in inc:
            result["stage_over_bare"]["spark"] = round(inc["engines"]["spark_product_text"]["items_per_s"] / bare, 3)
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return result
