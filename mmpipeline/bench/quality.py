"""Ranking-quality benchmark: ``mmpipeline bench quality --config FILE [--param key=value ...]``.

On the config's lake (silver tables + gold embeddings, as the pipeline left them) and in one run:
builds the training data in memory (same builder as the stage), trains every fusion variant in
``rank.bench_fusions`` and evaluates all of them next to the plain baselines -- BM25, text-only
(query-title cosine) and image-only (query-image cosine) -- on the same held-out queries, ranking
the whole catalog. Nothing is registered; the JSON printed is the result.

When the catalog carries a colour attribute (``rank.colour_attribute``), the benchmark runs a second
time with colour words removed from the titles (titles re-embedded with the configured text model,
BM25 rebuilt), the situation where only the image still knows the colour.

Params: any ``rank.*`` field (``epochs=5``, ``max_eval_queries=300``, ``bench_fusions=[concat]``),
``colour_free`` (``auto`` | true | false), ``run_date``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)



def colour_vocabulary(attrs: pd.Series, attribute: str) -> list[str]:
    """Colour phrases from the catalog's attribute values, and their single words (longest first)."""
    values: set[str] = set()
    for a in attrs.dropna():
        d = dict(a) if not isinstance(a, dict) else a
        v = d.get(attribute)
        if v and str(v).strip().lower() not in ("", "na", "n/a", "none", "null"):
            phrase = str(v).strip().lower()
            values.add(phrase)
            values.update(w for w in re.split(r"[\s/&-]+", phrase) if len(w) >= 3)
    return sorted(values, key=lambda s: (-len(s), s))


def strip_words(titles: list[str], vocab: list[str]) -> list[str]:
    if not vocab:
        return titles
    pat = re.compile(r"\b(?:" + "|".join(re.escape(v) for v in vocab) + r")\b", re.IGNORECASE)
    return [re.sub(r"\s+", " ", pat.sub(" ", t or "")).strip() for t in titles]


def _variant(featurizer, judgments, interactions, rc, run_date, label: str) -> dict[str, Any]:
    from mmpipeline.rank import data, train
    from mmpipeline.rank.evaluation import evaluate

    t0 = time.perf_counter()
    df, counts = data.build(judgments, interactions, featurizer, rc, run_date)
    parts = {s: df[df["split"] == s].reset_index(drop=True) for s in ("train", "valid")}
    tr, va = train.make_lists(parts["train"], featurizer), train.make_lists(parts["valid"], featurizer)
    build_s = time.perf_counter() - t0
    models, fit_info = {}, {}
    for fusion in rc.bench_fusions:
        t1 = time.perf_counter()
        model, hist = train.fit(featurizer, tr, va, rc, fusion=fusion)
        name = f"fusion_{fusion}"
        models[name] = model
        best = max(hist, key=lambda h: h.get(f"valid_ndcg_at_{rc.eval_k}", 0.0))
        fit_info[name] = {"epochs": len(hist), "best_epoch": best["epoch"],
                          "valid_ndcg_at_10": round(best.get(f"valid_ndcg_at_{rc.eval_k}", float("nan")), 4),
                          "seconds": round(time.perf_counter() - t1, 1)}
        if model.modality_weights():
            fit_info[name]["modality_weights"] = {k: round(v, 3) for k, v in model.modality_weights().items()}
        log.info("%s: trained %s in %.0fs (%s)", label, name, time.perf_counter() - t1, fit_info[name])
    t2 = time.perf_counter()
    res = evaluate(featurizer, df, models, rc)
    keys = (f"ndcg_at_{rc.eval_k}", "mrr", f"recall_at_{rc.recall_k}")
    systems = {}
    for system, slices in res["metrics"].items():
        entry = {k: round(v, 4) for k, v in slices["all"].items() if k in keys}
        entry["slices"] = {sl: {k: round(v, 4) for k, v in ms.items() if k in keys} | {"queries": ms["queries"]}
                           for sl, ms in slices.items() if sl != "all"}
        if system in res["rmse"] and res["rmse"][system]:
            entry["rmse_grade"] = round(res["rmse"][system]["rmse"], 4)
            entry["rmse_mean_grade_baseline"] = round(res["rmse"][system]["rmse_mean_baseline"], 4)
        if system in fit_info:
            entry["training"] = fit_info[system]
        systems[system] = entry
    baselines = ("bm25", "text_cosine", "image_cosine")
    fusions = [s for s in systems if s.startswith("fusion_")]
    best_base = max(baselines, key=lambda b: np.nan_to_num(systems[b]["ndcg_at_10"], nan=-1))
    best_fusion = max(fusions, key=lambda f: systems[f]["ndcg_at_10"]) if fusions else None
    out = {"queries": res["queries"], "products": int(len(featurizer.ids)),
           "products_with_image": int(featurizer.has_image.sum()), "training_rows": counts["rows"],
           "train_queries": counts["train_queries"], "mean_candidates": round(res["mean_candidates"], 1),
           "candidate_recall": round(res["candidate_recall"], 4), "systems": systems,
           "seconds": {"build": round(build_s, 1), "evaluate": round(time.perf_counter() - t2, 1)}}
    if best_fusion:
        f_ndcg = systems[best_fusion]["ndcg_at_10"]
        out["summary"] = {
            "best_fusion": best_fusion, "best_fusion_ndcg_at_10": f_ndcg,
            "best_baseline": best_base, "best_baseline_ndcg_at_10": systems[best_base]["ndcg_at_10"],
            "every_fusion_beats_every_baseline": all(
                systems[f]["ndcg_at_10"] > np.nan_to_num(systems[b]["ndcg_at_10"], nan=-1) for f in fusions for b in baselines),
            "best_fusion_minus_text_only": round(f_ndcg - systems["text_cosine"]["ndcg_at_10"], 4),
            "best_fusion_minus_bm25": round(f_ndcg - systems["bm25"]["ndcg_at_10"], 4),
        }
    return out


def main(cfg, params: dict[str, Any]) -> dict[str, Any]:
    from mmpipeline.config import RankConfig
    from mmpipeline.lake import Lake
    from mmpipeline.rank import data
    from mmpipeline.rank.features import PairFeaturizer
    from mmpipeline.rank.train import set_seed

    if cfg is None:
        raise SystemExit("bench quality needs --config FILE (a lake with silver tables and gold embeddings)")
    params = dict(params or {})
    run_date = cfg.effective_run_date(params.pop("run_date", None))
    colour_free = params.pop("colour_free", "auto")
    rank_fields = set(RankConfig.model_fields)
    unknown = set(params) - rank_fields
    if unknown:
        raise SystemExit(f"unknown bench params {sorted(unknown)}; use rank.* fields, colour_free or run_date")
    rc = RankConfig.model_validate({**cfg.rank.model_dump(), **params})
    set_seed(rc.seed)
    lake = Lake.from_config(cfg)
    t0 = time.perf_counter()
    judgments, interactions = data.load_inputs(lake, run_date)
    fz = PairFeaturizer.from_lake(lake, cfg, as_of=run_date)
    result: dict[str, Any] = {
        "bench": "quality", "dataset": cfg.name, "run_date": str(run_date), "text_model": fz.meta.get("text_model"),
        "image_model": fz.meta.get("image_model"),
        "settings": {k: getattr(rc, k) for k in ("loss", "epochs", "hidden_dim", "negatives_random", "negatives_hard",
                                                  "candidates_k", "max_eval_queries", "max_train_queries", "bench_fusions")},
    }
    result["titles_as_given"] = _variant(fz, judgments, interactions, rc, run_date, "titles as given")

    attrs = lake.read_pandas("silver.products", columns=["product_id", "attributes"])
    vocab = colour_vocabulary(attrs["attributes"], rc.colour_attribute)
    if colour_free is True or (colour_free == "auto" and vocab):
        if not vocab:
            raise SystemExit(f"colour_free requested but no product has attribute {rc.colour_attribute!r}")
        from mmpipeline.embed.encoders import build_encoder
        from mmpipeline.embed.models import text_spec

        titles = strip_words(fz.titles, vocab)
        changed = sum(a != b for a, b in zip(titles, fz.titles))
        log.info("colour-free titles: %d of %d titles changed (%d colour words)", changed, len(titles), len(vocab))
        t1 = time.perf_counter()
        encoder = build_encoder(text_spec(cfg))
        text_vecs = encoder.encode(titles, progress=True, desc="re-embed colour-free titles")
        enc_s = time.perf_counter() - t1
        image = (list(fz.ids[fz.has_image > 0]), fz.p_image[fz.has_image > 0])
        products = fz.products.assign(title=titles)
        qv = (list(fz.q_pos), fz.q_mat)
        fz2 = PairFeaturizer(products, {"text": (list(fz.ids), text_vecs), "image": image}, qv,
                             meta={**fz.meta, "text_model": f"{fz.meta.get('text_model')} (colour-free titles)"})
        res = _variant(fz2, judgments, interactions, rc, run_date, "colour words removed")
        res["titles_changed"] = int(changed)
        res["colour_words"] = len(vocab)
        res["seconds"]["re_embed_titles"] = round(enc_s, 1)
        result["colour_words_removed"] = res
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    return result
