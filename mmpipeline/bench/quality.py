"""Ranking-quality benchmark: ``mmpipeline bench quality --config FILE [--param key=value ...]``.

On the config's lake (silver tables + gold embeddings, as the pipeline left them) and in one run:
builds the training data in memory (same builder as the stage), trains every fusion variant in
``rank.bench_fusions`` and evaluates all of them next to the plain baselines -- BM25, text-only
(query-title cosine) and image-only (query-image cosine) -- on the same held-out queries, ranking
the whole catalog. Nothing is registered; the JSON printed is the result.

When the catalog carries a colour attribute (``rank.colour_attribute``), the benchmark runs a second
time with colour words removed from the titles (titles re-embedded with the configured text model,
BM25 rebuilt), the situation where only the image still knows the colour.

Next to them, the LambdaMART peer (``rank.bench_lambdamart``): LightGBM lambdarank on exactly the
ranker's features, trained on the same lists (:mod:`mmpipeline.rank.lambdamart`). A baseline the
catalog cannot have (image cosine without images) is ``null`` (n/a). ``default_versus`` holds the
default model's (``rank.fusion``) per-query wins / losses / ties against every baseline and the
peer, per slice; ``table`` is a readable markdown table of every system.

Grade RMSE (``rmse_grade``): on every judged test pair, of the model's grade -- its grade head
(``rank.grade_weight`` > 0; the peer's LightGBM regression, ``rank.lambdamart_grade``) or else its
ranking score -- through an isotonic grade calibration fitted on the validation split's judged pairs
(``rmse_grade_from`` says which; ``rmse_grade_rank_score`` is the ranking score's, calibrated the same way).

Complete grades (``complete_grades``; judgments from the ``attribute_queries`` adapter): those judge
every full match but only a sample of partial matches, so an unjudged partial match in a top 10 counts
as irrelevant. The grader behind them grades every product, so each system is also scored against
complete grades, and an oracle -- the default model's candidates ranked by their true grade -- shows
the ceiling a reranker can reach under the sampled judgments (``summary.oracle_*``).

Params: any ``rank.*`` field (``epochs=5``, ``max_eval_queries=300``, ``bench_fusions=[concat]``,
``text_fields=[]`` for title-only features, ``match_features=false``, ``bench_lambdamart=false``), ``colour_free`` (``auto`` |
true | false), ``run_date``.
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


BASELINES = ("bm25", "text_cosine", "image_cosine")


def _r(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else round(float(v), 4)


def _top_k(items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best-scored retrieved items (score above ``FLOOR``), best first."""
    from mmpipeline.rank.metrics import FLOOR

    ok = scores > FLOOR
    return items[ok][np.argsort(-scores[ok], kind="stable")[:k]]


def complete_grades(r, rel, grader, rc, default: str | None) -> dict[str, Any]:
    """Every system's NDCG@k against complete grades (``grader``: every catalog product graded, not
    only the judged ones), and the attribute oracle: ``default``'s candidates (and the judged products
    it did not retrieve, at the bottom as in its own list) ranked by their complete grade, ties
    by ``default``'s score -- a perfect reranker of those candidates -- scored against both the
    sampled judgments and the complete grades."""
    from mmpipeline.rank.metrics import FLOOR, query_metrics

    k = rc.eval_k
    nd = f"ndcg_at_{k}"
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    per: dict[str, list[float]] = {s: [] for s in r.items}
    oracle_sampled, oracle_complete = [], []
    unmatched = 0
    for qi, q in enumerate(rel.queries):
        g = grader.grades(q)
        if g is None:
            unmatched += 1
            continue
        gain = g.astype(np.float64) / 3.0
        ideal = np.sort(gain)[::-1][:k]
        idcg = float((ideal * disc[:len(ideal)]).sum())
        if idcg <= 0:
            continue

        def complete(items: np.ndarray, scores: np.ndarray) -> float:  # NDCG@k of a ranking, catalog-wide ideal
            top = _top_k(items, scores, k)
            return float((gain[top] * disc[:len(top)]).sum()) / idcg

        for system in r.items:
            per[system].append(complete(r.items[system][qi], np.asarray(r.scores[system][qi], np.float64)))
        if default in r.items:
            items, scores = r.items[default][qi], np.asarray(r.scores[default][qi], np.float64)
            span = float(np.ptp(scores[scores > FLOOR])) + 1.0 if (scores > FLOOR).any() else 1.0
            osc = np.where(scores > FLOOR, gain[items] * 10.0 * span + scores, scores)
            oracle_complete.append(complete(items, osc))
            gmap = dict(zip(rel.rows[qi].tolist(), rel.gains[qi].tolist()))
            judged = np.array([gmap.get(int(i), 0.0) for i in items])
            m = query_metrics(osc, judged, rc.relevant_min_label, k, rc.recall_k)
            if m is not None:
                oracle_sampled.append(m[nd])
    out: dict[str, Any] = {"queries": len(rel.queries) - unmatched, "unmatched_queries": unmatched,
                           "systems": {s: _r(np.mean(v)) if v else None for s, v in per.items()}}
    if oracle_complete:
        out["oracle"] = {"reranks": default, f"{nd}_sampled_judgments": _r(np.mean(oracle_sampled)),
                         f"{nd}_complete_grades": _r(np.mean(oracle_complete))}
    return out


def _variant(featurizer, judgments, interactions, rc, run_date, label: str, grader=None) -> dict[str, Any]:
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
        best = max(hist, key=lambda h: train.selection_metric(h, rc))  # the epoch fit kept
        fit_info[name] = {"epochs": len(hist), "best_epoch": best["epoch"],
                          "valid_ndcg_at_10": round(best.get(f"valid_ndcg_at_{rc.eval_k}", float("nan")), 4),
                          "seconds": round(time.perf_counter() - t1, 1)}
        if "valid_grade_rmse" in best:  # the grade head's raw RMSE (normalised grades) at that epoch
            fit_info[name]["valid_grade_rmse"] = round(best["valid_grade_rmse"], 4)
        if model.modality_weights():
            fit_info[name]["modality_weights"] = {k: round(v, 3) for k, v in model.modality_weights().items()}
        log.info("%s: trained %s in %.0fs (%s)", label, name, time.perf_counter() - t1, fit_info[name])
    if rc.bench_lambdamart:  # the LambdaMART peer: same features, same lists, same evaluation
        from mmpipeline.rank.lambdamart import fit_lambdamart

        lm = fit_lambdamart(featurizer, tr, va, rc)
        models["lambdamart"] = lm
        fit_info["lambdamart"] = {**lm.info, "feature_importance": lm.feature_importance()}
        log.info("%s: trained lambdamart (%s)", label, lm.info)
    t2 = time.perf_counter()
    res = evaluate(featurizer, df, models, rc, keep_rankings=grader is not None)
    keys = (f"ndcg_at_{rc.eval_k}", "mrr", f"recall_at_{rc.recall_k}")
    systems: dict[str, Any] = {b: None for b in BASELINES}  # a baseline the catalog cannot have stays n/a (null)
    for system, slices in res["metrics"].items():
        entry = {k: _r(v) for k, v in slices["all"].items() if k in keys}
        entry["slices"] = {sl: {k: _r(v) for k, v in ms.items() if k in keys} | {"queries": ms["queries"]}
                           for sl, ms in slices.items() if sl != "all"}
        if system in res["rmse"] and res["rmse"][system]:
            entry["rmse_grade"] = round(res["rmse"][system]["rmse"], 4)
            entry["rmse_grade_linear"] = round(res["rmse"][system]["rmse_linear"], 4)
            entry["rmse_mean_grade_baseline"] = round(res["rmse"][system]["rmse_mean_baseline"], 4)
            entry["rmse_grade_from"] = "grade_head" if res["rmse"][system].get("grade_head") else "rank_score"
            if "rmse_rank_score" in res["rmse"][system]:  # the ranking score calibrated the same way
                entry["rmse_grade_rank_score"] = round(res["rmse"][system]["rmse_rank_score"], 4)
        if system in fit_info:
            entry["training"] = fit_info[system]
        systems[system] = entry
    nd = f"ndcg_at_{rc.eval_k}"

    def ndcg(sysname: str) -> float:
        e = systems.get(sysname)
        return -1.0 if e is None or e.get(nd) is None else e[nd]

    fusions = [s for s in systems if s.startswith("fusion_")]
    applicable = [b for b in BASELINES if systems.get(b) is not None]
    out = {"queries": res["queries"], "products": int(len(featurizer.ids)),
           "products_with_image": int(featurizer.has_image.sum()),
           "products_with_text_fields": int(featurizer.has_fields.sum()), "text_fields": list(featurizer.text_fields),
           "ranker_features": featurizer.active_features(), "training_rows": counts["rows"],
           "train_queries": counts["train_queries"], "mean_candidates": round(res["mean_candidates"], 1),
           "candidate_recall": round(res["candidate_recall"], 4), "systems": systems,
           "seconds": {"build": round(build_s, 1), "evaluate": round(time.perf_counter() - t2, 1)}}
    default = f"fusion_{rc.fusion}" if f"fusion_{rc.fusion}" in systems else (fusions[0] if fusions else None)
    if default:
        # per-slice wins / losses of the default model against every baseline and the LambdaMART peer
        others = applicable + [s for s in systems if s == "lambdamart" or (s.startswith("fusion_") and s != default)]
        out["default_versus"] = {o: {sl: {k: (_r(v) if k == "delta" else v) for k, v in c.items()}
                                     for sl, c in res["versus"][default].get(o, {}).items()}
                                 for o in others if o in res["versus"][default]}
    if fusions:
        best_base = max(applicable, key=ndcg)
        best_fusion = max(fusions, key=ndcg)
        f_ndcg = ndcg(best_fusion)
        summary = {
            "default_model": default, "default_ndcg_at_10": ndcg(default),
            "best_fusion": best_fusion, "best_fusion_ndcg_at_10": f_ndcg,
            "best_baseline": best_base, "best_baseline_ndcg_at_10": ndcg(best_base),
            "default_minus_best_baseline": round(ndcg(default) - ndcg(best_base), 4),
            "every_fusion_beats_every_baseline": all(ndcg(f) > ndcg(b) for f in fusions for b in applicable),
            "best_fusion_minus_text_only": round(f_ndcg - ndcg("text_cosine"), 4),
            "best_fusion_minus_bm25": round(f_ndcg - ndcg("bm25"), 4),
        }
        if systems.get("lambdamart") is not None:
            summary["default_minus_lambdamart"] = round(ndcg(default) - ndcg("lambdamart"), 4)
            summary["best_fusion_minus_lambdamart"] = round(f_ndcg - ndcg("lambdamart"), 4)
        out["summary"] = summary
    if grader is not None:  # judgments that sample partial matches: the complete grades and the ceiling
        out["complete_grades"] = complete_grades(res["rankings"], res["relevance"], grader, rc, default)
        oracle = out["complete_grades"].get("oracle")
        if oracle and fusions:
            ceiling = oracle[f"{nd}_sampled_judgments"]
            out["summary"][f"oracle_{nd}_sampled_judgments"] = ceiling
            out["summary"]["oracle_minus_best_baseline"] = round(ceiling - ndcg(best_base), 4)
            if systems.get("lambdamart") is not None:
                out["summary"]["oracle_minus_lambdamart"] = round(ceiling - ndcg("lambdamart"), 4)
    out["table"] = table_lines(systems, rc, out.get("complete_grades"))
    return out


def table_lines(systems: dict[str, Any], rc, complete: dict[str, Any] | None = None) -> list[str]:
    """A readable (markdown) table: one row per system, n/a where the catalog lacks the modality;
    with ``complete`` (:func:`complete_grades`), a column of NDCG against complete grades and a row
    for the attribute oracle."""
    nd, rk = f"ndcg_at_{rc.eval_k}", f"recall_at_{rc.recall_k}"
    extra = f" NDCG@{rc.eval_k}, every product graded |" if complete else ""
    lines = [f"| system | NDCG@{rc.eval_k} | MRR | Recall@{rc.recall_k} | grade RMSE |{extra}",
             "| --- | --- | --- | --- | --- |" + (" --- |" if complete else "")]

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    for name, e in systems.items():
        c = f" {f((complete or {}).get('systems', {}).get(name))} |" if complete else ""
        if e is None:
            lines.append(f"| {name} | n/a | n/a | n/a | n/a |{c}")
        else:
            lines.append(f"| {name} | {f(e.get(nd))} | {f(e.get('mrr'))} | {f(e.get(rk))} | {f(e.get('rmse_grade'))} |{c}")
    oracle = (complete or {}).get("oracle")
    if oracle:
        lines.append(f"| oracle (perfect rerank of {oracle['reranks']}'s candidates) | {f(oracle[nd + '_sampled_judgments'])} "
                     f"| | | | {f(oracle[nd + '_complete_grades'])} |")
    return lines


def colour_free_catalog(products: pd.DataFrame, vocab: list[str], attribute: str) -> tuple[pd.DataFrame, int]:
    """The catalog frame (:func:`~mmpipeline.retrieval.features.catalog_frame`) as the featuriser keeps it
    (last row per product id) with the colour words removed from titles, descriptions and brands and the
    colour attribute dropped: (frame, number of titles changed)."""
    p = products.drop_duplicates("product_id", keep="last").reset_index(drop=True)
    before = p["title"].fillna("").astype(str).tolist()
    titles = strip_words(before, vocab)
    p = p.assign(title=titles)
    if "attributes" in p.columns:  # nor may the colour attribute tell it
        p["attributes"] = strip_attribute(p["attributes"], attribute)
    for col in ("description", "brand"):
        if col in p.columns:
            p[col] = strip_words(p[col].fillna("").astype(str).tolist(), vocab)
    return p, sum(a != b for a, b in zip(titles, before))


def strip_attribute(attrs: pd.Series, attribute: str) -> pd.Series:
    """The attributes without ``attribute`` (the colour-free run: only the image still knows it)."""
    def drop(a):
        if a is None or (isinstance(a, float) and np.isnan(a)):
            return a
        items = a.items() if isinstance(a, dict) else a
        return [(k, v) for k, v in items if k != attribute]
    return attrs.map(drop)


def main(cfg, params: dict[str, Any]) -> dict[str, Any]:
    from mmpipeline.config import RankConfig
    from mmpipeline.lake import Lake
    from mmpipeline.rank import data
    from mmpipeline.retrieval.features import PairFeaturizer, catalog_frame
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
    fz = PairFeaturizer.from_lake(lake, cfg.model_copy(update={"rank": rc}), as_of=run_date)
    result: dict[str, Any] = {
        "bench": "quality", "dataset": cfg.name, "run_date": str(run_date), "text_model": fz.meta.get("text_model"),
        "image_model": fz.meta.get("image_model"),
        "settings": {k: getattr(rc, k) for k in ("fusion", "loss", "epochs", "hidden_dim", "use_vectors", "negatives_random",
                                                  "negatives_hard", "candidates_k", "max_eval_queries", "max_train_queries",
                                                  "bench_fusions", "bench_lambdamart", "text_fields",
                                                  "match_features", "grade_weight", "scalar_transform", "ple_bins", "input_noise",
                                                  "bilinear_rank", "lambdamart_grade")},
    }
    catalog: list[pd.DataFrame] = []  # silver.products as of the run date, read once if at all

    def catalog_once() -> pd.DataFrame:
        if not catalog:
            catalog.append(catalog_frame(lake, run_date))
        return catalog[0]

    grader = None
    jsrc = cfg.sources.get("judgments")
    if jsrc is not None and jsrc.adapter == "attribute_queries":
        from mmpipeline.sources.attribute_queries import AttributeGrader

        # the catalog's own attributes (the colour-free run's grades too: relevance does not change
        # because a title stopped naming the colour)
        cat = catalog_once()
        attributes_of = dict(zip(cat["product_id"].astype(str), cat["attributes"]))
        grader = AttributeGrader.from_config(jsrc, [attributes_of.get(str(i)) for i in fz.ids])
    result["titles_as_given"] = _variant(fz, judgments, interactions, rc, run_date, "titles as given", grader)
    log.info("titles as given:\n%s", "\n".join(result["titles_as_given"]["table"]))

    attrs = lake.read_pandas("silver.products", columns=["product_id", "attributes"])
    vocab = colour_vocabulary(attrs["attributes"], rc.colour_attribute)
    if colour_free is True or (colour_free == "auto" and vocab):
        if not vocab:
            raise SystemExit(f"colour_free requested but no product has attribute {rc.colour_attribute!r}")
        from mmpipeline.embed.encoders import build_encoder
        from mmpipeline.embed.models import text_spec

        products, changed = colour_free_catalog(catalog_once(), vocab, rc.colour_attribute)
        if list(products["product_id"].astype(str)) != list(fz.ids):
            raise SystemExit("bench quality: silver.products changed while the benchmark ran; run it again")
        titles = products["title"].tolist()
        log.info("colour-free titles: %d of %d titles changed (%d colour words)", changed, len(titles), len(vocab))
        t1 = time.perf_counter()
        encoder = build_encoder(text_spec(cfg))
        text_vecs = encoder.encode(titles, progress=True, desc="re-embed colour-free titles")
        enc_s = time.perf_counter() - t1
        image = (list(fz.ids[fz.has_image > 0]), fz.p_image[fz.has_image > 0])
        qv = (list(fz.q_pos), fz.q_mat)
        fz2 = PairFeaturizer(products, {"text": (list(fz.ids), text_vecs), "image": image}, qv,
                             meta={**fz.meta, "text_model": f"{fz.meta.get('text_model')} (colour-free titles)"},
                             text_fields=list(rc.text_fields), match_features=rc.match_features)
        res = _variant(fz2, judgments, interactions, rc, run_date, "colour words removed", grader)
        res["titles_changed"] = int(changed)
        res["colour_words"] = len(vocab)
        res["seconds"]["re_embed_titles"] = round(enc_s, 1)
        result["colour_words_removed"] = res
        log.info("colour words removed:\n%s", "\n".join(res["table"]))
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    return result
