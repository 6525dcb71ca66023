"""The domain-adapted text tower (``mmpipeline run tune-text-tower``): the embed stage's
sentence-transformers text model (the bundled all-MiniLM-L6-v2 by default) fine-tuned on the shop's
own searches, so query and product-text vectors meet where this shop's judgments say they should.

``run(ctx)``:

1. does nothing when ``text_tune.enabled`` is false or the text model is not a sentence-transformers
   model;
2. builds (query, relevant product text) pairs from ``silver.judgments`` and ``silver.interactions``
   known at the run date -- graded and split exactly as the ranker's training data
   (:func:`mmpipeline.rank.data.graded_pairs`, :func:`mmpipeline.rank.data.assign_split` over
   ``rank.split``): only **train-split** queries are trained on (no query the ranker is validated or
   tested on leaks in), validation-split queries decide the promotion. A pair is a positive when its
   label is at least ``text_tune.min_label``; with ``text_tune.hard_negatives`` a judged product of
   the same query with label at most ``text_tune.negative_max_label`` is its hard negative (judged,
   so never a false negative); subsampled deterministically to ``text_tune.max_pairs``;
3. fingerprints the pairs, the product texts and every knob: a registered version with the same
   fingerprint is reused (a re-run of the same date gives the same version; nothing trains);
4. fine-tunes with sentence-transformers' ``MultipleNegativesRankingLoss`` (in-batch negatives plus
   the hard negative where there is one) for ``text_tune.epochs`` at ``text_tune.max_seq_length``
   tokens, AdamW with linear warm-up/decay, on ``text_tune.device`` (auto: CUDA when present);
5. evaluates the frozen and the tuned model on the validation queries: whole-catalog text-cosine
   NDCG@10 (the catalog capped at ``text_tune.max_eval_products``: every judged product of those
   queries plus a deterministic sample of the rest);
6. logs params, per-epoch loss and both NDCG@10 values to one MLflow run, registers the model folder
   as a new version of ``<mlflow.model_name>-text-tower`` and points ``text_tune.alias`` at it only
   when it beats the frozen model by more than ``text_tune.min_gain``.

The embed stage then embeds with the promoted version (:func:`mmpipeline.embed.models.text_spec`),
recording it as the model version, so vectors are re-embedded exactly when the promotion changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmpipeline.embed import data as edata
from mmpipeline.embed import models, registry
from mmpipeline.embed.runtime import resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config
    from mmpipeline.context import RunContext

log = logging.getLogger(__name__)

STAGE = "tune-text-tower"


# ------------------------------------------------------------------------------------ data (pure)
def _known_at(df: pd.DataFrame | None, run_date: dt.date) -> pd.DataFrame | None:
    if df is None or "run_date" not in df.columns:
        return df
    return df[pd.to_datetime(df["run_date"]).dt.date <= run_date]


def split_pairs(judgments: pd.DataFrame | None, interactions: pd.DataFrame | None, cfg: "Config") -> pd.DataFrame:
    """Graded (query, product) pairs with the ranker's split: query_id, query_norm, product_id,
    label, split."""
    from mmpipeline.rank.data import assign_split, graded_pairs

    pairs = graded_pairs(judgments, interactions, cfg.rank)
    pairs = pairs.dropna(subset=["query_norm"])
    pairs = pairs[pairs["query_norm"].astype(str).str.strip() != ""].reset_index(drop=True)
    pairs["split"] = assign_split(pairs["query_id"], cfg.rank.split).to_numpy() if len(pairs) else []
    return pairs


def training_examples(pairs: pd.DataFrame, texts: dict[str, str], cfg: "Config") -> pd.DataFrame:
    """Train-split positives as (query, positive[, negative]) texts, deterministic order and sample.

    Only ``split == 'train'`` rows are used. The hard negative of a positive is one of the same
    query's judged products with label <= ``negative_max_label`` (chosen by a hash of the pair)."""
    tc = cfg.text_tune
    tr = pairs[(pairs["split"] == "train") & pairs["product_id"].isin(texts)]
    pos = tr[tr["label"] >= tc.min_label].sort_values(["query_id", "product_id"], kind="stable")
    out = pd.DataFrame({"query_id": pos["query_id"].to_numpy(object), "anchor": pos["query_norm"].astype(str).to_numpy(object),
                        "product_id": pos["product_id"].to_numpy(object),
                        "positive": pos["product_id"].map(texts).to_numpy(object), "negative": None})
    out = out[out["positive"].astype(str).str.len() > 0].reset_index(drop=True)
    if tc.hard_negatives and len(out):
        neg = tr[tr["label"] <= tc.negative_max_label].sort_values(["query_id", "product_id"], kind="stable")
        by_q = neg.groupby("query_id")["product_id"].agg(list).to_dict()
        chosen = []
        for qid, pid in zip(out["query_id"], out["product_id"]):
            cands = by_q.get(qid)
            if not cands:
                chosen.append(None)
                continue
            h = int(hashlib.blake2b(f"{qid}|{pid}".encode(), digest_size=4).hexdigest(), 16)
            chosen.append(texts.get(cands[h % len(cands)]))
        out["negative"] = chosen
    if tc.max_pairs and len(out) > tc.max_pairs:
        out = out.sample(n=tc.max_pairs, random_state=tc.seed).sort_values(["query_id", "product_id"], kind="stable")
    return out.reset_index(drop=True)


def batches(examples: pd.DataFrame, batch_size: int, seed: int, epoch: int) -> list[pd.DataFrame]:
    """Shuffled batches of one epoch; triplets and pairs in separate batches (the loss needs one
    shape per batch), at most one positive per query in a batch (another positive of the same query
    would be a false in-batch negative)."""
    rng = np.random.default_rng(seed * 1000 + epoch)
    out = []
    has_neg = examples["negative"].notna() if "negative" in examples else pd.Series(False, index=examples.index)
    for part in (examples[has_neg], examples[~has_neg]):
        if not len(part):
            continue
        part = part.iloc[rng.permutation(len(part))]
        pending: list[pd.DataFrame] = []
        rest = part
        while len(rest):
            first = ~rest.duplicated("query_id", keep="first")
            take = rest[first]
            for s in range(0, len(take), batch_size):
                b = take.iloc[s:s + batch_size]
                if len(b) >= 2:  # one example has no in-batch negative
                    pending.append(b)
            rest = rest[~first]
        out.extend(pending)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def ndcg_at_k(ranked: np.ndarray, gains: dict[str, float], k: int = 10) -> float:
    """NDCG@k of ranked product ids against graded gains (label in [0, 1]; exponential gain)."""
    g = np.array([2.0 ** gains.get(p, 0.0) - 1.0 for p in ranked[:k]])
    disc = 1.0 / np.log2(np.arange(2, len(g) + 2))
    dcg = float((g * disc).sum())
    ideal = np.sort(np.array([2.0 ** v - 1.0 for v in gains.values()]))[::-1][:k]
    idcg = float((ideal * (1.0 / np.log2(np.arange(2, len(ideal) + 2)))).sum())
    return dcg / idcg if idcg > 0 else float("nan")


def text_cosine_ndcg(qvecs: np.ndarray, pvecs: np.ndarray, product_ids: np.ndarray,
                     gains: list[dict[str, float]], k: int = 10) -> float:
    """Mean NDCG@k over queries ranking the products by cosine (vectors L2-normalised here)."""
    q = qvecs / np.maximum(np.linalg.norm(qvecs, axis=1, keepdims=True), 1e-12)
    p = pvecs / np.maximum(np.linalg.norm(pvecs, axis=1, keepdims=True), 1e-12)
    vals = []
    for s in range(0, len(q), 256):
        sims = q[s:s + 256] @ p.T
        kk = min(k, sims.shape[1])
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        for i, row in enumerate(top):
            order = row[np.argsort(-sims[i, row], kind="stable")]
            v = ndcg_at_k(product_ids[order], gains[s + i], k)
            if not math.isnan(v):
                vals.append(v)
    return float(np.mean(vals)) if vals else float("nan")


def eval_set(pairs: pd.DataFrame, product_ids: list[str], cfg: "Config") -> tuple[pd.DataFrame, np.ndarray]:
    """Validation queries (query_id, query_norm, gains) and the ranked catalog (capped)."""
    tc = cfg.text_tune
    va = pairs[(pairs["split"] == "valid") & pairs["product_id"].isin(set(product_ids))]
    va = va[va["label"] > 0]
    qs = va.groupby("query_id", as_index=False).agg(query_norm=("query_norm", "first"))
    gains = {q: dict(zip(d["product_id"], d["label"].astype(float))) for q, d in va.groupby("query_id")}
    qs["gains"] = qs["query_id"].map(gains)
    qs = qs.sort_values("query_id", kind="stable").reset_index(drop=True)
    if tc.max_eval_queries and len(qs) > tc.max_eval_queries:
        qs = qs.sample(n=tc.max_eval_queries, random_state=tc.seed).sort_values("query_id").reset_index(drop=True)
    catalog = np.asarray(sorted(product_ids), dtype=object)
    if tc.max_eval_products and len(catalog) > tc.max_eval_products:
        judged = set(pairs.loc[pairs["query_id"].isin(qs["query_id"]), "product_id"])
        keep = np.array([p in judged for p in catalog])
        rest = np.flatnonzero(~keep)
        n_more = max(0, tc.max_eval_products - int(keep.sum()))
        if n_more < len(rest):
            rest = np.random.default_rng(tc.seed).choice(rest, size=n_more, replace=False)
        keep[rest] = True
        catalog = catalog[keep]
    return qs, catalog


# ------------------------------------------------------------------------------------ training
def fine_tune(model, examples: pd.DataFrame, *, epochs: int, batch_size: int, lr: float, warmup_share: float,
              seed: int, device: str, log_metric=None, progress: bool = True) -> list[dict[str, float]]:
    """Fine-tune a SentenceTransformer in place with MultipleNegativesRankingLoss; per-epoch loss."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from tqdm.auto import tqdm

    log_metric = log_metric or (lambda *a, **k: None)
    torch.manual_seed(seed)
    loss_fn = MultipleNegativesRankingLoss(model)
    plan = [batches(examples, batch_size, seed, e) for e in range(epochs)]
    total_steps = max(1, sum(len(p) for p in plan))
    warm = int(total_steps * warmup_share)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total_steps - s) / max(1, total_steps - warm)))

    prep = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6: preprocess

    def feats(texts):
        f = prep(list(texts))
        return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in f.items()}

    history = []
    step = 0
    model.train()
    for e, plan_e in enumerate(plan, start=1):
        total, n = 0.0, 0
        bar = tqdm(plan_e, desc=f"text tower epoch {e}/{epochs}", disable=not progress, mininterval=2.0)
        for b in bar:
            cols = ["anchor", "positive"] + (["negative"] if b["negative"].notna().all() else [])
            loss = loss_fn([feats(b[c]) for c in cols], None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * len(b)
            n += len(b)
            bar.set_postfix(loss=f"{total / max(n, 1):.3f}")
        history.append({"epoch": e, "loss": total / max(n, 1), "steps": len(plan_e)})
        log_metric("train_loss", history[-1]["loss"], e)
        log.info("text tower: epoch %d/%d loss %.4f (%d steps)", e, epochs, history[-1]["loss"], len(plan_e))
    model.eval()
    return history


def _encode(model, texts: list[str], batch_size: int = 128) -> np.ndarray:
    return np.asarray(model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False), dtype=np.float32)


def _frozen_product_vectors(lake, base, catalog: np.ndarray, cat_texts: list[str], model) -> tuple[np.ndarray, int]:
    """The frozen model's vectors of the ranked catalog: reused from gold.product_embeddings where the
    embed stage stored them for this model version and content, encoded otherwise."""
    hashes = [edata.text_hash(t, base.max_length) for t in cat_texts]
    vecs = edata.stored_vectors(lake, "gold.product_embeddings", "product_id", list(catalog), hashes, "text",
                                base.name, base.version)
    missing = np.isnan(vecs[:, 0]) if vecs is not None else np.ones(len(catalog), bool)
    if missing.any():
        enc = _encode(model, [t for t, m in zip(cat_texts, missing) if m])
        if vecs is None:
            vecs = np.zeros((len(catalog), enc.shape[1]), np.float32)
        vecs[missing] = enc
    return vecs, int((~missing).sum())


# ------------------------------------------------------------------------------------ stage
def training_params(cfg: "Config", base) -> dict[str, Any]:
    """Every knob that changes the tuned model (not the device: it changes speed only)."""
    tc = cfg.text_tune
    return {"base_model": base.name, "base_model_version": base.version, "max_pairs": tc.max_pairs,
            "epochs": tc.epochs, "batch_size": tc.batch_size, "max_seq_length": tc.max_seq_length, "lr": tc.lr,
            "warmup_share": tc.warmup_share, "min_label": tc.min_label, "hard_negatives": tc.hard_negatives,
            "negative_max_label": tc.negative_max_label, "seed": tc.seed, "split": cfg.rank.split,
            "interaction_grades": cfg.rank.interaction_grades, "product_text_fields": cfg.embed.product_text_fields,
            "max_eval_queries": tc.max_eval_queries, "max_eval_products": tc.max_eval_products,
            "min_gain": tc.min_gain}


def input_fingerprint(examples: pd.DataFrame, eval_q: pd.DataFrame, catalog: np.ndarray, texts: dict[str, str],
                      params: dict[str, Any]) -> str:
    """sha256 over the knobs, the training examples and the validation set (queries, gains and the
    text of every ranked product): equal fingerprints mean the same model and the same decision."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for row in examples[["anchor", "positive", "negative"]].itertuples(index=False):
        h.update(("\n" + "\x00".join("" if v is None else str(v) for v in row)).encode())
    for qid, qn, g in zip(eval_q["query_id"], eval_q["query_norm"], eval_q["gains"]):
        h.update(f"\nq{qid}\x00{qn}\x00{json.dumps(g, sort_keys=True)}".encode())
    for pid in catalog:
        h.update(f"\np{pid}\x00{hashlib.sha1(texts.get(pid, '').encode()).hexdigest()}".encode())
    return "sha256:" + h.hexdigest()[:32]


def _read(lake, name: str, columns: list[str]) -> pd.DataFrame | None:
    if not lake.exists(name):
        return None
    return lake.read_pandas(name, columns=columns)


def run(ctx: "RunContext") -> dict[str, Any]:
    """``mmpipeline run tune-text-tower``: fine-tune, track in MLflow, register; promote when it wins."""
    import mlflow
    from sentence_transformers import SentenceTransformer

    from mmpipeline.context import StageError
    from mmpipeline.ops import print_table
    from mmpipeline.tracking import setup_mlflow

    cfg, tc = ctx.cfg, ctx.cfg.text_tune
    lake = ctx.lake
    m = cfg.embed.text_model
    if not tc.enabled or m.kind != "sentence-transformers":
        why = "text_tune.enabled is false" if not tc.enabled else f"embed.text_model.kind is {m.kind!r}"
        log.info("text tower: nothing to tune: %s", why)
        return {"trained": False, "skipped": f"no text tower tuning: {why}"}
    if not lake.exists("silver.products"):
        raise StageError("silver.products does not exist yet: run ingest and clean first")
    base = models.text_spec(cfg, tuned=False)
    products = edata.load_products(lake, cfg)
    texts = {p: t for p, t in zip(products["product_id"], products["text"]) if t}
    rd = ctx.run_date
    judgments = _known_at(_read(lake, "silver.judgments", ["query_id", "query_norm", "product_id", "grade", "run_date"]), rd)
    interactions = _known_at(_read(lake, "silver.interactions", ["query_id", "query_norm", "product_id", "event_type",
                                                                  "run_date"]), rd)
    pairs = split_pairs(judgments, interactions, cfg)
    examples = training_examples(pairs, texts, cfg)
    eval_q, catalog = eval_set(pairs, list(texts), cfg)
    if len(examples) < 2 * 2:
        raise StageError(f"only {len(examples)} training-split (query, relevant product) pairs with label >= "
                         f"text_tune.min_label={tc.min_label}: too few to tune the text tower (lower min_label, or "
                         "set text_tune.enabled=false)")
    if not len(eval_q):
        raise StageError("no validation-split queries with a relevant product: cannot decide whether the tuned "
                         "text tower beats the frozen one (check rank.split)")
    params = training_params(cfg, base)
    fingerprint = input_fingerprint(examples, eval_q, catalog, texts, params)
    name = registry.text_tower_registered_name(cfg)
    setup_mlflow(cfg)
    done = registry.text_version_with_fingerprint(cfg, fingerprint)
    if done is not None:  # a transaction: the same inputs never train or register a second version
        promoted = (done.tags or {}).get(registry.PROMOTED_TAG) == "true"
        cur = registry.text_tower_version(cfg)
        if promoted and (cur is None or str(cur.version) != str(done.version)):
            registry.set_text_alias(cfg, str(done.version))
        log.info("text tower: %s version %s was tuned on the same inputs (%s): nothing to do", name, done.version,
                 fingerprint)
        return {"registered_model": name, "version": str(done.version), "promoted": promoted, "trained": False,
                "run_id": done.run_id, "input_fingerprint": fingerprint,
                "frozen_ndcg_at_10": float((done.tags or {}).get("frozen_ndcg_at_10", "nan")),
                "tuned_ndcg_at_10": float((done.tags or {}).get("tuned_ndcg_at_10", "nan")),
                "skipped": "a text tower tuned on the same inputs is registered"}

    device = resolve_device(tc.device)
    t0 = time.perf_counter()
    model = SentenceTransformer(base.source, device=device)
    model.max_seq_length = base.max_length  # evaluated as the embed stage will encode (embed.max_text_length)
    cat_texts = [texts[p] for p in catalog]
    q_texts = eval_q["query_norm"].astype(str).tolist()
    gains = list(eval_q["gains"])
    frozen_p, n_reused = _frozen_product_vectors(lake, base, catalog, cat_texts, model)
    frozen = text_cosine_ndcg(_encode(model, q_texts), frozen_p, catalog, gains)
    eval_s = time.perf_counter() - t0
    log.info("text tower: frozen %s text-cosine NDCG@10 %.4f on %d validation queries x %d products (%d product "
             "vectors reused from gold.product_embeddings; %.0fs)", base.name, frozen, len(eval_q), len(catalog),
             n_reused, eval_s)
    exp_id = setup_mlflow(cfg)
    n_trip = int(examples["negative"].notna().sum())
    with mlflow.start_run(experiment_id=exp_id, run_name=f"text-tower {rd}") as mrun:
        mlflow.log_params({**{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in params.items()},
                           "n_examples": len(examples), "n_hard_negatives": n_trip, "n_eval_queries": len(eval_q),
                           "n_eval_products": len(catalog), "device": device,
                           "loss": "MultipleNegativesRankingLoss (in-batch + judged hard negatives)"})
        mlflow.set_tags({"stage": STAGE, "run_date": str(rd), registry.FINGERPRINT_TAG: fingerprint})
        t1 = time.perf_counter()
        model.max_seq_length = tc.max_seq_length
        history = fine_tune(model, examples, epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr,
                            warmup_share=tc.warmup_share, seed=tc.seed, device=device,
                            log_metric=lambda k, v, step: mlflow.log_metric(k, v, step=step),
                            progress=cfg.embed.progress)
        train_s = time.perf_counter() - t1
        model.max_seq_length = base.max_length
        tuned = text_cosine_ndcg(_encode(model, q_texts), _encode(model, cat_texts), catalog, gains)
        promote = bool(tuned > frozen + tc.min_gain)
        mlflow.log_metrics({"frozen_valid_text_ndcg_at_10": frozen, "tuned_valid_text_ndcg_at_10": tuned,
                            "train_seconds": train_s})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / registry.TEXT_TOWER_ARTIFACT
            model.save(str(folder))
            mlflow.log_artifacts(str(folder), registry.TEXT_TOWER_ARTIFACT)
        tags = {registry.FINGERPRINT_TAG: fingerprint, models.TUNED_BASE_TAG: base.version,
                "frozen_ndcg_at_10": f"{frozen:.4f}", "tuned_ndcg_at_10": f"{tuned:.4f}"}
        version = registry.register_text_tower(cfg, mrun.info.run_id, tags, promote)
    print_table(f"text tower ({base.name} fine-tuned on {len(examples):,} train-split pairs): validation "
                f"text-cosine NDCG@10", ["model", "ndcg@10", "queries", "products"],
                [["frozen", round(frozen, 4), len(eval_q), len(catalog)],
                 [f"tuned v{version}{' (promoted)' if promote else ''}", round(tuned, 4), len(eval_q), len(catalog)]])
    if not promote:
        log.info("text tower: v%s does not beat the frozen model (%.4f vs %.4f + min_gain %.4f): not promoted; the "
                 "embed stage keeps its current text model", version, tuned, frozen, tc.min_gain)
    return {"registered_model": name, "version": version, "promoted": promote, "trained": True,
            "run_id": mrun.info.run_id, "input_fingerprint": fingerprint, "frozen_ndcg_at_10": round(frozen, 4),
            "tuned_ndcg_at_10": round(tuned, 4), "n_examples": len(examples), "n_hard_negatives": n_trip,
            "n_eval_queries": len(eval_q), "n_eval_products": len(catalog), "epochs": history,
            "train_seconds": round(train_s, 1), "device": device}


# ------------------------------------------------------------------------------------ same-night re-embed
REEMBED_STAGE = "reembed-text"


def reembed(ctx: "RunContext") -> dict[str, Any]:
    """``mmpipeline run reembed-text`` (the ranker DAG, right after ``tune-text-tower``): re-embed the
    product and query **text** with the promoted text tower, so the same night's training data,
    evaluation and scoring use the tuned vectors (not only the next catalog night's embed).

    The embed stage's incremental text tasks with the encoder :func:`models.text_spec` resolves: the
    stored vectors are keyed by model version, so after a promotion every text vector is re-encoded
    once (one Delta merge per table replacing the old version's rows) and a re-run encodes nothing.
    A no-op without loading a model when no tuned tower is promoted (the catalog night's embed
    already stored the frozen model's vectors) or tuning is off. Images are never touched."""
    from mmpipeline.context import StageError
    from mmpipeline.embed import job
    from mmpipeline.ops import print_table

    cfg, tc, lake = ctx.cfg, ctx.cfg.text_tune, ctx.lake
    m = cfg.embed.text_model
    why = ("text_tune.enabled is false" if not tc.enabled else "text_tune.use_in_embed is false"
           if not tc.use_in_embed else f"embed.text_model.kind is {m.kind!r}" if m.kind != "sentence-transformers"
           else None)
    if why is None and registry.text_tower_version(cfg) is None:
        why = f"no text tower promoted as {registry.text_tower_registered_name(cfg)}@{tc.alias}"
    if why is None:
        if not lake.exists("silver.products"):
            raise StageError("silver.products does not exist yet: run ingest and clean first")
        tspec = models.text_spec(cfg)
        if tspec.version == models.text_spec(cfg, tuned=False).version:
            why = "the promoted text tower was tuned from another text model (see the warning above)"
    if why is not None:
        log.info("reembed-text: nothing to do: %s (the stored text vectors stay)", why)
        return {"reembedded": False, "encoded": 0, "skipped": f"no re-embed: {why}"}
    t0 = time.perf_counter()
    products = edata.load_products(lake, cfg)
    queries = edata.load_queries(lake, cfg)
    encoders: dict[str, Any] = {}
    tasks = job.text_tasks(products, queries, tspec)
    results = [job.run_task(ctx, t, encoders, stage=REEMBED_STAGE) for t in tasks]
    seconds = time.perf_counter() - t0
    print_table(f"reembed-text ({tspec.name}@{tspec.version})",
                ["table", "encoded", "reused", "skipped", "deleted", "seconds"],
                [[r.label, r.encoded, r.reused, r.skipped, r.deleted, round(r.seconds, 1)] for r in results])
    encoded = sum(r.encoded for r in results)
    log.info("reembed-text: %d text vectors re-encoded with %s@%s, %d up to date, in %.1fs", encoded, tspec.name,
             tspec.version, sum(r.reused for r in results), seconds)
    return {"reembedded": encoded > 0, "encoded": encoded, "reused": sum(r.reused for r in results),
            "text_model": f"{tspec.name}@{tspec.version}", "seconds": round(seconds, 1),
            "tasks": {r.label: r.as_dict() for r in results}}
