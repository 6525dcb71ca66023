"""The image tower's training stage (``mmpipeline run train-image-tower``): a torchvision CNN +
projection (:mod:`mmpipeline.embed.tower.model`) trained so product photos land in the (frozen)
text-embedding space of their own product text, with a symmetric InfoNCE (CLIP) loss.

No pretrained image weights can be downloaded here, so the pipeline trains its own image encoder
from the catalog's image/text pairs. ``run(ctx)``:

1. does nothing when the config does not embed images with the trained tower
   (``embed.embed_images`` false, or another ``embed.image_model.kind``);
2. reads ``silver.products`` with a usable image (``image_status == 'ok'``) and fingerprints the
   training config (the text model and every training knob) and the training inputs (config plus
   product ids, text and image content hashes). It is a no-op when a registered version carries
   the same input fingerprint (a re-run gives the same version; the alias is pointed at it if it
   had moved), and -- unless ``--full-refresh`` -- when the version at the alias was trained with
   the same config on an earlier catalog (the nightly DAG trains once per config, as the embed
   stage used to, instead of retraining, and re-embedding every image, whenever a product changes);
3. splits a held-out set deterministically by product id hash;
4. text targets: the product-text vectors of the configured text model -- reused from
   ``gold.product_embeddings`` when present with the same content hash, encoded otherwise;
5. checks every image decodes (DataLoader workers; only the errors are kept), then streams the
   images from their files through a DataLoader batch by batch in every epoch (and for the
   held-out evaluation): memory holds a few batches, never the whole catalog's images;
6. trains for ``tower_epochs`` epochs -- against the batch's texts (``tower_negatives: batch``) or
   every training product's text (``catalog``: the hard negatives, same type in another colour,
   are always there), batches optionally kept within a group (``tower_group_by``, e.g. the
   category path: in-batch hard negatives), images flipped and optionally cropped
   (``tower_crop_scale``; colours are never jittered) -- logging per-epoch loss and held-out text->image Recall@10 to
   one MLflow run, together with the Recall@10 of the same architecture untrained (its initial
   weights, same seed);
7. logs ``tower/config.json`` + ``tower/state_dict.pt`` as run artifacts and registers them as a
   new version of ``<mlflow.model_name>-image-tower`` with alias ``champion`` (configurable). The
   embed stage loads the alias (``image_model.kind: trained-tower``) and never trains.

Training code: inference modules (encoders, models, job) never import this one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpipeline.embed import data as edata
from mmpipeline.embed import models, registry
from mmpipeline.embed.imageio import ImageTransform, image_loader
from mmpipeline.embed.registry import TOWER_ARTIFACT
from mmpipeline.embed.runtime import autocast, resolve_device
from mmpipeline.embed.tower.model import ImageTower, save_tower
from mmpipeline.tracking import setup_mlflow

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mmpipeline.config import Config
    from mmpipeline.context import RunContext
    from mmpipeline.embed.encoders import EncoderSpec

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ metrics
def recall_at_k(query_vecs: np.ndarray, item_vecs: np.ndarray, k: int = 10) -> float:
    """Share of queries i whose own item i ranks in the top k by cosine (both sides normalised)."""
    if not len(query_vecs):
        return float("nan")
    q = query_vecs / np.maximum(np.linalg.norm(query_vecs, axis=1, keepdims=True), 1e-12)
    it = item_vecs / np.maximum(np.linalg.norm(item_vecs, axis=1, keepdims=True), 1e-12)
    sims = q @ it.T
    own = np.diag(sims)
    rank = (sims > own[:, None]).sum(axis=1)  # items strictly better than the own item
    return float((rank < k).mean())


def holdout_mask(ids: list[str], share: float) -> np.ndarray:
    """Deterministic split by a hash of the id (stable when the catalog grows)."""
    return np.array([int(hashlib.md5(str(i).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share for i in ids])


def info_nce(img, txt, logit_scale):
    """Symmetric CLIP loss for a batch of matching (image, text) pairs; both normalised."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp().clamp(max=100) * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def catalog_nce(img, bank, own, logit_scale, same: float = 0.98, soft: float = 0.0):
    """InfoNCE of each image against the text vectors of the whole training catalog (``bank``,
    [N, d], normalised; ``own``: each image's row in it) instead of its batch: the text tower is
    frozen, so every product's text is a negative at the cost of one [B, N] product, and the
    hardest ones (same type, another colour) are always there. Texts as close to the image's own
    text as ``same`` (cosine; duplicate titles) are positives too, sharing the target mass.
    ``soft`` > 0: the target is instead a softmax of the own text's cosines to the bank at that
    temperature -- texts like the own one (same type and colour, another brand) share the mass."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp().clamp(max=100) * img @ bank.T
    sims = bank[own] @ bank.T
    if soft > 0:
        target = torch.softmax(sims / soft, dim=1)
    else:
        pos = (sims >= same).float()
        pos[range(len(own)), own] = 1.0
        target = pos / pos.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def grouped_batches(train_idx: np.ndarray, groups: np.ndarray | None, batch_size: int, gen) -> list:
    """One epoch's batches (positions in the catalog). Without ``groups``: a seeded permutation cut
    into batches. With ``groups`` (a group code per catalog position, e.g. the category path):
    products of one group are kept together -- groups in random order, products shuffled within
    each -- so a batch holds few groups and its in-batch negatives are hard ones (same article type,
    another colour); the batch order is shuffled again."""
    import torch

    n = len(train_idx)
    steps = max(1, n // batch_size)
    perm = train_idx[torch.randperm(n, generator=gen).numpy()]
    if groups is not None:
        g = np.asarray(groups)[perm]
        uniq = np.unique(g)
        rank = np.empty(len(uniq), np.int64)
        rank[torch.randperm(len(uniq), generator=gen).numpy()] = np.arange(len(uniq))
        perm = perm[np.argsort(rank[np.searchsorted(uniq, g)], kind="stable")]
    batches = [perm[s * batch_size:(s + 1) * batch_size] for s in range(steps)]
    if groups is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return [torch.from_numpy(np.ascontiguousarray(b)) for b in batches]


def augment(x, gen, min_scale: float = 0.75):
    """Colour-preserving augmentation of a uint8 batch: horizontal flip and a random crop (a side of
    ``min_scale``..1 of the image, anywhere in it) resized back; no colour jitter -- the colour is
    what the image has to tell when the title is silent."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if min_scale >= 1.0:
        return x
    scale = min_scale + (1 - min_scale) * torch.rand(b, generator=gen)
    out = torch.empty_like(x)
    for i in range(b):
        ch, cw = max(1, int(round(h * float(scale[i])))), max(1, int(round(w * float(scale[i]))))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        crop = x[i:i + 1, :, top:top + ch, left:left + cw].float()
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).round().clamp(0, 255).to(x.dtype)[0]
    return out


# ------------------------------------------------------------------------------------ training
def scan_images(paths: list[str], size: int, num_workers: int, progress: bool = True,
                max_pixels: int = 40_000_000) -> list[str]:
    """Decode every image once (DataLoader workers), keeping nothing but the errors ('' = ok): which
    products can be trained on is known before training starts, in bounded memory."""
    from tqdm.auto import tqdm

    errors = [""] * len(paths)
    loader = image_loader(paths, ImageTransform(size, normalize=False), 256, num_workers, "cpu", max_pixels)
    with tqdm(total=len(paths), desc="check images", unit="img", disable=not progress, mininterval=1.0) as bar:
        for idx, _, errs in loader:
            for k, e in enumerate(errs):
                if e:
                    errors[idx[k]] = e
            bar.update(len(idx))
    return errors


def stream_images(paths: list[str], batches, size: int, num_workers: int, max_pixels: int = 40_000_000):
    """uint8 image batches (B, 3, size, size), in the order of ``batches`` (lists of positions in
    ``paths``), decoded on the fly by a DataLoader: ``num_workers`` processes decode the next
    batches while the current one trains; at most ``num_workers * 4`` batches are held."""
    from torch.utils.data import DataLoader

    from mmpipeline.embed.imageio import ImageFileDataset, _collate

    batches = [list(map(int, b)) for b in batches]
    if not batches:
        return
    ds = ImageFileDataset(paths, ImageTransform(size, normalize=False), max_pixels)
    workers = num_workers if len(batches) > 1 else 0
    loader = DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    for _, pix, _ in loader:
        yield pix


def embed_image_stream(model, stream, tf, device: str) -> np.ndarray:
    """Vectors of a stream of uint8 image batches (inference mode)."""
    import torch

    model.eval()
    outs = []
    with torch.inference_mode():
        for x in stream:
            outs.append(model(tf.finish(x.to(device))).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)


def train_tower(image_paths: list[str], text_vecs: np.ndarray, train_idx: np.ndarray, eval_idx: np.ndarray, *,
                arch: str, image_size: int, epochs: int, lr: float, batch_size: int, device: str, dtype: str = "fp32",
                seed: int = 0, hidden: int = 512, weights: str | None = None, log_metric=None,
                progress: bool = True, num_workers: int = 0, max_pixels: int = 40_000_000,
                eval_batch_size: int = 256, negatives: str = "batch", groups: np.ndarray | None = None,
                crop_scale: float = 1.0, soft_targets: float = 0.0) -> tuple[ImageTower, dict[str, Any]]:
    """Train an :class:`ImageTower` on (image, text vector) pairs. Images are streamed from their
    files through a DataLoader (``num_workers`` decoding processes) batch by batch, in the order of
    the seeded permutation -- never all decoded into memory. ``log_metric(name, value, step)``
    receives per-epoch loss and held-out Recall@10; returns the model and a result dict with the
    untrained and trained held-out Recall@10."""
    import torch
    from tqdm.auto import tqdm

    log_metric = log_metric or (lambda *a, **k: None)
    torch.manual_seed(seed)
    dim = text_vecs.shape[1]
    model = ImageTower(arch, dim, hidden, weights=weights, seed=seed).to(device)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    tf = ImageTransform(image_size)
    txt = torch.from_numpy(np.ascontiguousarray(text_vecs, dtype=np.float32))
    txt = torch.nn.functional.normalize(txt, dim=-1)
    if negatives == "catalog":  # the training products' texts, and each position's row among them
        bank = txt[torch.from_numpy(np.asarray(train_idx))].to(device)
        own = torch.full((len(text_vecs),), -1, dtype=torch.long)
        own[torch.from_numpy(np.asarray(train_idx))] = torch.arange(len(train_idx))

    def evaluate() -> float:
        if not len(eval_idx):
            return float("nan")
        chunks = [eval_idx[i:i + eval_batch_size] for i in range(0, len(eval_idx), eval_batch_size)]
        iv = embed_image_stream(model, stream_images(image_paths, chunks, image_size, num_workers, max_pixels),
                                tf, device)
        return recall_at_k(text_vecs[eval_idx], iv, 10)

    untrained = evaluate()
    log.info("tower: untrained %s held-out text->image Recall@10 = %.4f (%d held-out)", arch, untrained, len(eval_idx))
    log_metric("untrained_holdout_recall_at_10", untrained, 0)
    log_metric("holdout_recall_at_10", untrained, 0)
    opt = torch.optim.AdamW(list(model.parameters()) + [logit_scale], lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train_idx) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch),
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total, n = 0.0, 0
        steps = grouped_batches(train_idx, groups, batch_size, gen)
        bar = tqdm(zip(steps, stream_images(image_paths, steps, image_size, num_workers, max_pixels)),
                   total=len(steps), desc=f"tower epoch {epoch}/{epochs}", disable=not progress, mininterval=2.0)
        for b, x in bar:
            x = augment(x, gen, crop_scale)  # flips (and crops): the colours stay as they are
            x = tf.finish(x.to(device, non_blocking=True))
            with autocast(device, dtype):
                img = model(x)
            if negatives == "catalog":
                loss = catalog_nce(img.float(), bank, own[b].to(device), logit_scale, soft=soft_targets)
            else:
                loss = info_nce(img.float(), txt[b].to(device), logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
            n += len(b)
            bar.set_postfix(loss=f"{total / max(n, 1):.3f}")
        epoch_loss = total / max(n, 1)
        rec = evaluate()
        history.append({"epoch": epoch, "loss": epoch_loss, "holdout_recall_at_10": rec})
        log_metric("train_loss", epoch_loss, epoch)
        log_metric("holdout_recall_at_10", rec, epoch)
        log.info("tower: epoch %d/%d loss %.4f held-out Recall@10 %.4f (%.0fs)", epoch, epochs, epoch_loss, rec,
                 time.perf_counter() - t0)
    trained = history[-1]["holdout_recall_at_10"] if history else untrained
    return model.eval(), {"untrained_recall_at_10": untrained, "trained_recall_at_10": trained,
                          "history": history, "train_seconds": round(time.perf_counter() - t0, 1),
                          "n_train": int(len(train_idx)), "n_holdout": int(len(eval_idx))}


# ------------------------------------------------------------------------------------ stage
def training_params(cfg: "Config", tspec: "EncoderSpec") -> dict[str, Any]:
    """Every knob that changes the trained tower (the device is left out: it changes speed, not
    what is trained)."""
    ec = cfg.embed
    return {"arch": ec.image_model.name, "init_weights": ec.image_model.weights or "random",
            "image_size": ec.image_size, "epochs": ec.tower_epochs, "lr": ec.tower_lr,
            "batch_size": ec.tower_batch_size, "hidden": ec.tower_hidden, "seed": ec.tower_seed,
            "dtype": ec.dtype, "max_products": ec.tower_max_products, "holdout_share": ec.tower_holdout_share,
            "max_holdout": ec.tower_max_holdout, "max_pixels": cfg.clean.image.max_pixels,
            "text_model": tspec.name, "text_model_version": tspec.version, "max_text_length": tspec.max_length,
            "negatives": ec.tower_negatives, "group_by": ec.tower_group_by, "crop_scale": ec.tower_crop_scale,
            "soft_targets": ec.tower_soft_targets}


def config_fingerprint(params: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:32]


def input_fingerprint(products: "pd.DataFrame", params: dict[str, Any]) -> str:
    """sha256 over the training pairs (id, text hash, image content key; in id order) and the
    training knobs: equal fingerprints mean the same tower would be trained again."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    L = int(params["max_text_length"])
    for pid, text, key in sorted(zip(products["product_id"], products["text"], products["image_key"])):
        h.update(f"\n{pid}\x00{edata.text_hash(text, L)}\x00{key}".encode())
    return "sha256:" + h.hexdigest()[:32]


def training_products(ctx: "RunContext") -> "pd.DataFrame":
    """The (product, image, text) pairs the tower trains on: products with a usable image and
    text, subsampled deterministically to ``embed.tower_max_products``."""
    from mmpipeline.context import StageError

    ec = ctx.cfg.embed
    products = edata.load_products(ctx.lake, ctx.cfg)
    products = products[products["has_image"]].reset_index(drop=True)
    if ec.tower_max_products and len(products) > ec.tower_max_products:
        products = products.sample(n=ec.tower_max_products, random_state=ec.tower_seed).sort_values("product_id")
        products = products.reset_index(drop=True)
    products = products[products["text"].str.len() > 0].reset_index(drop=True)
    if len(products) < 8:
        raise StageError(f"only {len(products)} products with a usable image and text: too few to train an image tower")
    return products


def product_groups(lake, products: "pd.DataFrame", column: str | None) -> np.ndarray | None:
    """A group code per training product from ``silver.products.<column>`` (``embed.tower_group_by``,
    e.g. the category path), or None (no grouping) when unset. A product without a value is its own
    group."""
    import pandas as pd

    from mmpipeline.context import StageError

    if not column:
        return None
    try:
        df = lake.read_pandas("silver.products", columns=["product_id", column])
    except Exception as e:  # noqa: BLE001 - a wrong column name is a config error, said in one line
        raise StageError(f"embed.tower_group_by: silver.products has no column {column!r} ({type(e).__name__}); "
                         "set it to a silver.products column such as category_path, or unset it") from e
    by_id = dict(zip(df["product_id"].astype(str), df[column]))
    vals = [by_id.get(str(p)) for p in products["product_id"]]
    keys = [str(v) if v is not None and str(v) != "" and v == v else f"\x00{p}" for v, p in
            zip(vals, products["product_id"])]
    return pd.factorize(pd.Series(keys, dtype=object), sort=True)[0].astype(np.int64)


def run(ctx: "RunContext") -> dict[str, Any]:
    """``mmpipeline run train-image-tower``: train, track in MLflow, register with the alias; a
    no-op when the registry already holds a tower trained on the same inputs."""
    import mlflow

    from mmpipeline.context import StageError
    from mmpipeline.embed.encoders import build_encoder
    from mmpipeline.ops import print_table

    cfg = ctx.cfg
    ec = cfg.embed
    lake = ctx.lake
    if not models.wants_trained_tower(cfg):
        why = ("embed.embed_images is false" if not ec.embed_images
               else f"embed.image_model.kind is {ec.image_model.kind!r}, not 'trained-tower'")
        log.info("tower: nothing to train: %s", why)
        return {"trained": False, "skipped": f"no image tower needed: {why}"}
    if not lake.exists("silver.products"):
        raise StageError("silver.products does not exist yet: run ingest and clean first")
    products = training_products(ctx)
    log.info("tower: %d products with image and text", len(products))
    tspec = models.text_spec(cfg)
    params = training_params(cfg, tspec)
    fingerprint = input_fingerprint(products, params)
    config_fp = config_fingerprint(params)
    registered = registry.tower_registered_name(cfg)
    current = registry.tower_version(cfg)

    # a transaction: the same inputs and config never train (and register) a second version
    done = registry.version_with_fingerprint(cfg, fingerprint)
    if done is not None:
        if current is None or str(current.version) != str(done.version):
            registry.set_alias(cfg, str(done.version))
            log.info("tower: alias %s now points at version %s (trained on the same inputs)", ec.tower_alias,
                     done.version)
        log.info("tower: %s version %s was trained on the same inputs and config (%s): nothing to do",
                 registered, done.version, fingerprint)
        return {"registered_model": registered, "version": str(done.version), "alias": ec.tower_alias,
                "run_id": done.run_id, "trained": False, "input_fingerprint": fingerprint,
                "skipped": "a tower trained on the same inputs and config is registered"}
    # the catalog changed but the config did not: keep the registered tower unless asked to retrain
    # (a version registered before config fingerprints were recorded counts as the same config)
    current_config = (current.tags or {}).get(registry.CONFIG_TAG, config_fp) if current is not None else None
    if current_config == config_fp and not ctx.full_refresh:
        log.info("tower: %s version %s (alias %s) was trained with this config on an earlier catalog: kept "
                 "(run with --full-refresh to retrain it on the current catalog)", registered, current.version,
                 ec.tower_alias)
        return {"registered_model": registered, "version": str(current.version), "alias": ec.tower_alias,
                "run_id": current.run_id, "trained": False, "input_fingerprint": fingerprint,
                "skipped": "the registered tower has this config; --full-refresh retrains it on the current catalog"}

    # text targets: reuse stored vectors of the current text model when the content matches
    hashes = [edata.text_hash(t, tspec.max_length) for t in products["text"]]
    text_vecs = edata.stored_vectors(lake, "gold.product_embeddings", "product_id", products["product_id"].tolist(),
                                     hashes, "text", tspec.name, tspec.version)
    missing = np.isnan(text_vecs[:, 0]) if text_vecs is not None else np.ones(len(products), bool)
    n_reused = int((~missing).sum())
    if missing.any():
        enc = build_encoder(tspec)
        vecs = enc.encode(products.loc[missing, "text"].tolist(), progress=ec.progress, desc="tower: encode text")
        if text_vecs is None:
            text_vecs = np.zeros((len(products), enc.dim), np.float32)
        text_vecs[missing] = vecs
    log.info("tower: text targets from %s (%d reused from gold, %d encoded)", tspec.name, n_reused, int(missing.sum()))

    image_paths = products["image_path"].tolist()
    errors = scan_images(image_paths, ec.image_size, ec.num_workers, ec.progress, cfg.clean.image.max_pixels)
    ok = np.array([not e for e in errors])
    if (~ok).any():
        log.warning("tower: %d images failed to decode and are left out of training", int((~ok).sum()))
    hold = holdout_mask(products["product_id"].tolist(), ec.tower_holdout_share)
    train_idx = np.flatnonzero(ok & ~hold)
    eval_idx = np.flatnonzero(ok & hold)
    if ec.tower_max_holdout and len(eval_idx) > ec.tower_max_holdout:
        eval_idx = eval_idx[:ec.tower_max_holdout]
    if len(train_idx) < 2:
        raise StageError("too few decodable training images for the image tower")

    groups = product_groups(lake, products, ec.tower_group_by)
    device = resolve_device(ec.device)
    arch = ec.image_model.name
    exp_id = setup_mlflow(cfg)
    run_params = {"arch": arch, "image_size": ec.image_size, "epochs": ec.tower_epochs, "lr": ec.tower_lr,
                  "batch_size": ec.tower_batch_size, "hidden": ec.tower_hidden, "seed": ec.tower_seed,
                  "text_model": tspec.name, "text_model_version": tspec.version, "n_train": len(train_idx),
                  "n_holdout": len(eval_idx), "device": device, "dtype": ec.dtype,
                  "init_weights": ec.image_model.weights or "random",
                  "loss": ("InfoNCE against every training product's text" if ec.tower_negatives == "catalog"
                           else "symmetric InfoNCE (CLIP)") + ", text tower frozen",
                  "group_by": ec.tower_group_by, "crop_scale": ec.tower_crop_scale,
                  "soft_targets": ec.tower_soft_targets}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"image-tower {ctx.run_date}") as mrun:
        mlflow.log_params(run_params)
        mlflow.set_tags({"stage": "train-image-tower", "run_date": str(ctx.run_date),
                         registry.FINGERPRINT_TAG: fingerprint, registry.CONFIG_TAG: config_fp})
        model, res = train_tower(
            image_paths, text_vecs, train_idx, eval_idx, arch=arch, image_size=ec.image_size, epochs=ec.tower_epochs,
            lr=ec.tower_lr, batch_size=ec.tower_batch_size, device=device, dtype=ec.dtype, seed=ec.tower_seed,
            hidden=ec.tower_hidden, weights=ec.image_model.weights,
            log_metric=lambda k, v, step: mlflow.log_metric(k, v, step=step), progress=ec.progress,
            num_workers=ec.num_workers, max_pixels=cfg.clean.image.max_pixels, negatives=ec.tower_negatives,
            groups=groups, crop_scale=ec.tower_crop_scale, soft_targets=ec.tower_soft_targets)
        mlflow.log_metrics({"final_holdout_recall_at_10": res["trained_recall_at_10"],
                            "final_untrained_holdout_recall_at_10": res["untrained_recall_at_10"],
                            "train_seconds": res["train_seconds"]})
        tcfg = {"arch": arch, "out_dim": int(text_vecs.shape[1]), "hidden": ec.tower_hidden,
                "image_size": ec.image_size, "text_model": tspec.name, "text_model_version": tspec.version,
                "run_id": mrun.info.run_id}
        with tempfile.TemporaryDirectory() as tmp:
            save_tower(model, tcfg, Path(tmp) / TOWER_ARTIFACT)
            mlflow.log_artifacts(str(Path(tmp) / TOWER_ARTIFACT), TOWER_ARTIFACT)
        version = registry.register_tower(cfg, mrun.info.run_id, res, fingerprint, config_fp)
    print_table(f"image tower ({arch}, {ec.image_size}px): held-out text->image Recall@10",
                ["model", "recall@10", "held-out"],
                [["untrained", res["untrained_recall_at_10"], res["n_holdout"]],
                 ["trained", res["trained_recall_at_10"], res["n_holdout"]]])
    return {"registered_model": registered, "version": version, "alias": ec.tower_alias,
            "run_id": mrun.info.run_id, "trained": True, "input_fingerprint": fingerprint,
            "untrained_recall_at_10": round(res["untrained_recall_at_10"], 4),
            "trained_recall_at_10": round(res["trained_recall_at_10"], 4), "n_train": res["n_train"],
            "n_holdout": res["n_holdout"], "train_seconds": res["train_seconds"],
            "images_failed": int((~ok).sum()), "text_vectors_reused": n_reused}
