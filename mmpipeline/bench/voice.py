"""``mmpipeline bench voice``: recognition quality, speed and search quality of spoken queries (JSON).

On the clips of the ``voice_queries`` source's manifest (the shared sample: 500 spoken Home Depot
queries), in one run:

* **word error rate** (torchmetrics' ``word_error_rate``; jiwer is not installed) against the
  manifest's transcripts, both sides in :func:`mmpipeline.voice.textnorm.wer_form` (case, punctuation
  incl. hyphens and apostrophes, number|unit spacing; ``strict``: ``query_norm`` only), overall and
  per slice (voice kind neural/formant, clean/noisy, sample rate), for each recognition variant:
  ``plain`` (Whisper's best hypothesis, sizes in written form), ``rescore`` (the n-best hypothesis the
  catalog / query-log vocabulary explains best, then the logged queries checked on the audio:
  :func:`mmpipeline.voice.vocab.verify_queries`, as the stage does; ``rescore_unverified``: without
  that check), ``prompt`` (catalog prompt), each also
  ``+correction`` (query snap of low-confidence or very close transcripts, word correction per
  ``voice.word_correction``); ``plain:no_written_form`` shows what the written form does. Each
  WER block also holds ``v2``: both sides in :func:`mmpipeline.voice.textnorm.wer_form_v2`
  (Whisper's evaluation approach: spoken numbers/fractions -> digits, ``by`` -> x, one spelling per
  unit, closed compounds the catalog's titles use), next to the v1 figure, which stays;
* **correction tuning** (``correction_tuning``; param ``tune_correction``, default true): the
  correction's confidence threshold and similarities chosen on one half of the clips (split by a
  hash of the clip id) by v2 WER with the clip's own query held out, reported on the other half
  against the default setting and no correction;
* **snap curve** (``snap_curve``; param ``snap_curve``, default true): v2 WER per voice kind for a
  grid of query-snap settings (``voice.min_query_similarity`` / ``voice.snap_confident_above``) with
  the clip's query in the log and held out, next to no correction;
* **real-time factor** of the stage's path (decode, preprocess, MFCC, batched recognition) against a
  bare faster-whisper loop (``WhisperModel.transcribe`` file by file) over the same clips; the
  ratio is bare RTF / stage RTF (>= 1: the stage is at least as fast);
* **NDCG@10** of the voice queries against the same queries typed, judged with the Home Depot
  relevance judgments of the typed query, per voice kind, with and without catalog-aware
  recognition. Ranker: BM25 over the whole catalog (always), and the registered champion when the
  config's lake has one (``rankers``).

Leakage: the clips *are* queries of the Home Depot log. Correcting against the full log can snap a
transcript to its own query, so every figure with correction is reported twice: ``held_out`` (the
clip's own query removed from the log and from the word counts, and all benchmark queries removed
from the prompt's frequent queries) and ``full_log``. ``held_out`` is the honest figure for queries
never seen before; ``full_log`` is what a repeated query gets in production.

* **second decode** (``redecode``, ``redecode+correction``; default variants when
  ``voice.redecode_below_logprob`` is set): the low-confidence clips decoded again (time-stretched
  copy, temperature samples), all hypotheses pooled and rescored; its time is part of the stage's
  real-time factor;
* **n-best search** (``voice:<variant>:nbest_search@<tau>``, rescore/redecode variants): the clip's
  hypotheses weighted by ``softmax(score / tau)`` searched together (BM25 score fusion for ``bm25``,
  weighted reciprocal-rank fusion for other rankers); the chosen transcript stands for the best one.

Params: ``limit`` (clips, default all), ``variants`` (list; default plain, rescore, plain+correction,
rescore+correction; also prompt, prompt+correction, redecode, redecode+correction), ``nbest_search``
(list of tau, default [0.1, 0.3]; [] for none), ``prompt_mode``
(initial_prompt | hotwords | both), ``bare_loop`` (default true), ``rankers`` (bm25, bm25+char: word and character-3-gram BM25 fused, champion),
``dump`` (CSV path: per-clip texts for error analysis), ``speed_clips`` (clips timed through both
paths for the real-time-factor ratio; default all).
Vocabulary and judgments come from the config's ``queries``/``products``/``judgments`` sources
(read whole, no demo sampling), so the benchmark does not depend on a pipeline run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def _source_frame(src, cols: dict[str, str]) -> pd.DataFrame:
    """A source file read with pandas, columns renamed canonical (plain column mappings only)."""
    df = pd.read_csv(src.path, dtype=str, keep_default_na=False, encoding_errors="replace") \
        if src.format == "csv" else pd.read_json(src.path, lines=src.format == "jsonl", dtype=str)
    out = pd.DataFrame(index=df.index)
    for canon, col in cols.items():
        if col in df.columns:
            out[canon] = df[col]
    return out


def load_catalog(cfg) -> dict[str, Any]:
    """Queries (text, frequency), products (id, title, brand) and judgments from the config's sources."""
    from mmpipeline.voice.vocab import norm

    s = cfg.sources
    out: dict[str, Any] = {"queries": pd.DataFrame(columns=["query_norm", "frequency"]),
                           "products": pd.DataFrame(columns=["product_id", "title", "brand"]),
                           "judgments": pd.DataFrame(columns=["query_norm", "product_id", "grade"])}
    if "queries" in s:
        q = _source_frame(s["queries"], {"query": s["queries"].columns.get("query", "query")})
        q["query_norm"] = q["query"].map(norm)
        out["queries"] = q[q["query_norm"] != ""].groupby("query_norm").size().rename("frequency").reset_index()
    if "products" in s:
        c = s["products"].columns
        p = _source_frame(s["products"], {k: c[k] for k in ("product_id", "title", "brand") if k in c})
        out["products"] = p.drop_duplicates("product_id").reset_index(drop=True)
    if "judgments" in s:
        c = s["judgments"].columns
        j = _source_frame(s["judgments"], {k: c[k] for k in ("query", "product_id", "grade") if k in c})
        j["query_norm"] = j["query"].map(norm)
        j["grade"] = pd.to_numeric(j["grade"], errors="coerce")
        out["judgments"] = j.dropna(subset=["grade"]).groupby(["query_norm", "product_id"])["grade"].mean().reset_index()
    return out


def load_manifest(cfg, limit: int | None) -> pd.DataFrame:
    src = cfg.sources.get("voice_queries")
    path = Path(src.path) if src and src.path else REPO.parent / "shared" / "datasets" / "voice" / "voice_queries.csv"
    root = Path(src.audio_root) if src and src.audio_root else path.parent
    m = pd.read_csv(path, dtype={"voice_query_id": str, "transcript": str}, keep_default_na=False)
    m["path"] = [str(root / p) for p in m["audio_path"]]
    m["kind"] = np.where(m["voice"].str.startswith("piper"), "neural", "formant")
    m["noise"] = np.where(m["noise_snr_db"].astype(str).str.strip() == "", "clean", "noisy")
    m = m.sort_values("voice_query_id", kind="stable").reset_index(drop=True)
    return m.head(int(limit)) if limit else m


# ---------------------------------------------------------------------------------------- metrics


def wer(refs: list[str], hyps: list[str]) -> float:
    from torchmetrics.functional.text import word_error_rate

    return round(float(word_error_rate([h for h in hyps], [r for r in refs])), 4)


def wer_by_kind(refs: list[str], hyps: list[str], kinds, names) -> dict[str, float]:
    """WER over all clips and per voice kind in ``names`` (kinds without clips left out)."""
    out = {"all": wer(refs, hyps)}
    for k in names:
        j = [n for n, x in enumerate(kinds) if x == k]
        if j:
            out[k] = wer([refs[n] for n in j], [hyps[n] for n in j])
    return out


def _wer_by_slice(m: pd.DataFrame, refs: list[str], hyp: list[str]) -> dict[str, Any]:
    df = pd.DataFrame({"ref": refs, "hyp": hyp, "kind": m["kind"].values, "noise": m["noise"].values,
                       "sr": m["sample_rate"].astype(str).values})
    out: dict[str, Any] = {"all": wer(refs, hyp)}
    for col, name in (("kind", "voice"), ("noise", "noise"), ("sr", "sample_rate")):
        out[name] = {k: wer(list(g["ref"]), list(g["hyp"])) for k, g in df.groupby(col)}
    nc = df[(df.kind == "neural") & (df.noise == "clean")]
    if len(nc):
        out["neural_clean"] = wer(list(nc["ref"]), list(nc["hyp"]))
    return out


def wer_slices(m: pd.DataFrame, hyps: list[str], compounds: set[str] | None = None) -> dict[str, Any]:
    """WER overall and per slice, both sides in :func:`~mmpipeline.voice.textnorm.wer_form` (case,
    punctuation incl. hyphens/apostrophes, number-unit spacing); ``strict``: ``query_norm`` only;
    ``v2``: both sides in :func:`~mmpipeline.voice.textnorm.wer_form_v2` (Whisper-style number,
    fraction, unit and compound normalisation, ``compounds`` from the catalog's titles)."""
    from mmpipeline.voice.textnorm import wer_form, wer_form_v2
    from mmpipeline.voice.vocab import norm

    refs = [wer_form(t) for t in m["transcript"]]
    hyp = [wer_form(h) for h in hyps]
    out = _wer_by_slice(m, refs, hyp)
    out["v2"] = _wer_by_slice(m, [wer_form_v2(t, compounds) for t in m["transcript"]],
                              [wer_form_v2(h, compounds) for h in hyps])
    s_ref, s_hyp = [norm(t) for t in m["transcript"]], [norm(h) for h in hyps]
    kinds = m["kind"].to_numpy()
    out["strict"] = wer_by_kind(s_ref, s_hyp, kinds, sorted(set(kinds)))
    return out


def ndcg_table(ranked: dict[str, list[str]], refs: list[str], texts: list[str], judg: pd.DataFrame,
               k: int = 10) -> np.ndarray:
    """NDCG@k per clip: the ranking for ``texts[i]`` judged with the judgments of ``refs[i]``."""
    gains = {q: dict(zip(g["product_id"], g["gain"])) for q, g in judg.groupby("query_norm")}
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.full(len(refs), np.nan)
    for i, (ref, text) in enumerate(zip(refs, texts)):
        g = gains.get(ref)
        if not g or max(g.values()) <= 0:
            continue
        top = ranked.get(text, [])[:k]
        dcg = sum(g.get(p, 0.0) * disc[r] for r, p in enumerate(top))
        ideal = sorted(g.values(), reverse=True)[:k]
        idcg = sum(v * disc[r] for r, v in enumerate(ideal))
        out[i] = dcg / idcg if idcg > 0 else 0.0
    return out


def rank_bm25(products: pd.DataFrame, texts: list[str], k: int = 10) -> dict[str, list[str]]:
    from mmpipeline.retrieval import BM25Index

    idx = BM25Index(products["product_id"].tolist(), (products["title"].fillna("")).tolist())
    uniq = sorted({t for t in texts if t})
    ids, _ = idx.search(uniq, k)
    return {t: [str(p) for p in row if p is not None] for t, row in zip(uniq, ids)}


def char_grams(text: str, n: int = 3) -> str:
    """A text as its words' character n-grams (with the word boundary as ``0``), space separated: the
    tokens of a spelling-tolerant BM25 (``cieling`` and ``ceiling`` share most of theirs)."""
    from mmpipeline.retrieval.text import tokenize

    out = []
    for w in tokenize(text):
        w = f"0{w}0"
        out += [w[i:i + n] for i in range(max(1, len(w) - n + 1))]
    return " ".join(out)


def rank_fuzzy(products: pd.DataFrame, texts: list[str], k: int = 10, depth: int = 100) -> dict[str, list[str]]:
    """Word BM25 and character-3-gram BM25 over the titles, fused by reciprocal rank (k=60): the same
    path for typed and voice queries, tolerant of misspelt and misheard words."""
    from mmpipeline.retrieval import BM25Index

    ids = products["product_id"].tolist()
    titles = products["title"].fillna("").tolist()
    word = BM25Index(ids, titles)
    char = BM25Index(ids, [char_grams(t) for t in titles])
    uniq = sorted({t for t in texts if t})
    w_ids, _ = word.search(uniq, depth)
    c_ids, _ = char.search([char_grams(t) for t in uniq], depth)
    out = {}
    for t, wr, cr in zip(uniq, w_ids, c_ids):
        score: dict[str, float] = {}
        for row in (wr, cr):
            for r, p in enumerate(row):
                if p is not None:
                    score[str(p)] = score.get(str(p), 0.0) + 1.0 / (60 + r)
        out[t] = [p for p, _ in sorted(score.items(), key=lambda kv: -kv[1])[:k]]
    return out


def rank_champion(cfg, texts: list[str], k: int = 10) -> dict[str, list[str]]:
    """The score stage's path (whole-catalog candidates, featuriser, registered champion) on the
    config's lake, for arbitrary query texts."""
    from mmpipeline.lake import Lake
    from mmpipeline.retrieval.candidates import CandidateGenerator
    from mmpipeline.retrieval.text import product_text
    from mmpipeline.score.job import encode_missing_queries, load_inputs
    from mmpipeline.score.queries import query_id_for
    from mmpipeline.score.scoring import load_ranker, make_featurizer, rank_top, resolve_version, score_pairs

    sc = cfg.score
    lake = Lake(cfg.lake.root, engine="delta-rs")
    _, version, _ = resolve_version(cfg, sc.model_alias)
    inputs = load_inputs(lake, cfg)
    uniq = sorted({t for t in texts if t})
    qset = pd.DataFrame({"query_id": [query_id_for(t) for t in uniq], "query": uniq})
    qvec = encode_missing_queries(cfg, qset, inputs.query_text)
    gen = CandidateGenerator(inputs.products["product_id"].to_numpy(object), product_text(inputs.products),
                             inputs.text, inputs.image, k=sc.candidates_k, sources=list(sc.candidate_sources),
                             query_batch_size=sc.query_batch_size)
    cands = gen.generate(qset, qvec, progress=False)
    ranker = load_ranker(cfg, sc.model_alias, expect_version=version)
    ranked = rank_top(score_pairs(cands, make_featurizer(cfg, lake), ranker, sc.batch_size, progress=False), k)
    by_id = {qid: list(g.sort_values("rank")["product_id"].astype(str)) for qid, g in ranked.groupby("query_id")}
    return {t: by_id.get(query_id_for(t), []) for t in uniq}


def nbest_lists(recs, chosen: list[str], corrector, holdout, v) -> list[list[tuple[str, float]]]:
    """Per clip, its distinct n-best hypotheses in written form with their rescoring score (avg
    log-prob + weight x vocabulary coverage), best first; the chosen query text (after correction)
    stands in for the best one."""
    from mmpipeline.voice.textnorm import written_form

    out = []
    for i, r in enumerate(recs):
        excl = holdout[i] if holdout is not None else None
        seen: dict[str, float] = {}
        for t, lp in (getattr(r, "nbest", None) or [(r.text, r.avg_logprob or 0.0)]):
            wt = written_form(t)
            sc = float(lp) + (v.rescore_weight or 1.0) * corrector.coverage(wt, excl)
            if wt and (wt not in seen or sc > seen[wt]):
                seen[wt] = sc
        ranked = sorted(seen.items(), key=lambda kv: -kv[1])
        if ranked and chosen[i]:
            ranked = [(chosen[i], ranked[0][1])] + [(t, sc) for t, sc in ranked[1:] if t != chosen[i]]
        out.append(ranked)
    return out


def nbest_search(hyp_lists, tau: float, ranked: dict[str, list[str]], idx=None, k: int = 10) -> list[list[str]]:
    """Per clip, the ranking for its n-best list weighted by ``softmax(score / tau)``
    (:mod:`mmpipeline.voice.search`): with a BM25 index ``idx`` over the catalog, BM25 scores of every hypothesis against the
    catalog summed with the weights; otherwise weighted reciprocal-rank fusion of the hypotheses'
    rankings in ``ranked``."""
    from mmpipeline.voice.search import fuse_rankings, fuse_scores, hypothesis_weights

    out = []
    for h in hyp_lists:
        if not h:
            out.append([])
            continue
        w = hypothesis_weights([sc for _, sc in h], tau)
        keep = [(t, x) for (t, _), x in zip(h, w) if x >= 1e-3]
        if idx is not None:
            f = fuse_scores([idx.scores_all(t) for t, _ in keep], [x for _, x in keep])
            top = np.argsort(-f, kind="stable")[:k]
            out.append([str(idx.ids[j]) for j in top if f[j] > 0])
        else:
            out.append(fuse_rankings([ranked.get(t, []) for t, _ in keep], [x for _, x in keep], k))
    return out


def split_halves(ids) -> np.ndarray:
    """A fixed split of the clips into two halves by a hash of their id (True: the tuning half)."""
    import hashlib

    return np.array([int(hashlib.sha1(str(i).encode()).hexdigest(), 16) % 2 == 0 for i in ids])


def tune_correction(m: pd.DataFrame, raw: list, v, corrector, holdout, compounds,
                    thresholds=(-0.3, -0.5, -0.7, -1.0), query_similarities=(0.7, 0.8, 0.9),
                    word_similarities=(0.5, 0.6, 0.8)) -> dict[str, Any]:
    """Tune the correction's confidence threshold (``voice.correct_below_logprob``), query-snap and
    word similarities (``voice.min_query_similarity`` / ``min_word_similarity``) on one half of the
    clips (v2 WER, the clip's own query held out of the vocabulary) and report the chosen setting,
    the default and no correction on the other half."""
    from mmpipeline.voice.stage import postprocess
    from mmpipeline.voice.textnorm import wer_form_v2

    tune = split_halves(m["voice_query_id"])
    refs = [wer_form_v2(t, compounds) for t in m["transcript"]]

    def run(sel: np.ndarray, thr: float | None, qsim: float | None = None, sim: float | None = None) -> list[str]:
        idx = np.flatnonzero(sel)
        sub = [raw[i] for i in idx]
        hold = [holdout[i] for i in idx]
        if thr is None:
            return postprocess(sub, v, correction=False)["query_text"].tolist()
        c = corrector.with_similarities(qsim, sim)
        vv = v.model_copy(update={"correct_below_logprob": thr})
        return postprocess(sub, vv, c, holdout=hold, correction=True)["query_text"].tolist()

    def score(sel: np.ndarray, texts: list[str]) -> dict[str, float]:
        idx = np.flatnonzero(sel)
        return wer_by_kind([refs[i] for i in idx], [wer_form_v2(t, compounds) for t in texts],
                           m["kind"].to_numpy()[idx], ("neural", "formant"))

    grid = [(None, None, None)] + [(t, q, s) for t in thresholds for q in query_similarities
                                   for s in word_similarities]
    tuned = {"/".join(map(str, g)): score(tune, run(tune, *g))["all"] for g in grid}
    best = min(grid, key=lambda g: (tuned["/".join(map(str, g))], g[0] is not None))
    ev = ~tune
    return {"tune_clips": int(tune.sum()), "eval_clips": int(ev.sum()),
            "grid_tune_half_v2_wer": tuned,
            "grid_key": "correct_below_logprob/min_query_similarity/min_word_similarity (None: no correction)",
            "chosen": {"correct_below_logprob": best[0], "min_query_similarity": best[1],
                       "min_word_similarity": best[2]},
            "eval_half_v2_wer": {"chosen": score(ev, run(ev, *best)),
                                 "default": score(ev, run(ev, v.correct_below_logprob, v.min_query_similarity,
                                                          v.min_word_similarity)),
                                 "no_correction": score(ev, run(ev, None))}}


def snap_curve(m: pd.DataFrame, raw_by_scope: dict[str, list], v, corrector, holdout, compounds,
               grid=((0.9, None), (0.8, None), (0.8, 0.85), (0.75, 0.85), (0.7, 0.85), (0.7, 0.8),
                     (0.6, 0.8))) -> dict[str, Any]:
    """v2 WER per voice kind for query-snap settings ``(min_query_similarity, snap_confident_above)``,
    with the spoken query in the log (``full_log``: a repeated query) and held out (``held_out``: a
    new one): how far to trust the log is a trade-off between the two, which this curve shows."""
    from mmpipeline.voice.stage import postprocess
    from mmpipeline.voice.textnorm import wer_form_v2

    refs = [wer_form_v2(t, compounds) for t in m["transcript"]]
    kinds = m["kind"].to_numpy()

    def score(texts: list[str]) -> dict[str, float]:
        return wer_by_kind(refs, [wer_form_v2(t, compounds) for t in texts], kinds, sorted(set(kinds)))

    rows = [{"setting": "no correction", **{sc: score(postprocess(raw, v, correction=False)["query_text"].tolist())
                                            for sc, raw in raw_by_scope.items()}}]
    for q, above in grid:
        c = corrector.with_similarities(q, v.min_word_similarity)
        vv = v.model_copy(update={"min_query_similarity": q, "snap_confident_above": above})
        row: dict[str, Any] = {"setting": f"{q}/{above}",
                               "default": (q, above) == (v.min_query_similarity, v.snap_confident_above)}
        for sc, raw in raw_by_scope.items():
            row[sc] = score(postprocess(raw, vv, c, holdout=holdout if sc == "held_out" else None,
                                        correction=True)["query_text"].tolist())
        rows.append(row)
    return {"key": "min_query_similarity/snap_confident_above", "rows": rows}


# ------------------------------------------------------------------------------------------- main


def main(cfg, params: dict[str, Any]) -> dict[str, Any]:
    from mmpipeline.config import load_config
    from mmpipeline.voice.asr import bare_loop
    from mmpipeline.voice.adapt import recognizer_models
    from mmpipeline.voice.stage import (Decoding, make_recognizer, postprocess, prepare, query_verifier, recognise,
                                        redecode)
    from mmpipeline.voice.textnorm import wer_form
    from mmpipeline.voice.vocab import Corrector, Vocabulary, norm, rescore, verify_queries

    if cfg is None:
        cfg = load_config(REPO / "configs" / "homedepot.yaml")
    v = cfg.voice.model_copy()
    m = load_manifest(cfg, params.get("limit"))
    variants = list(params.get("variants") or ["plain", "rescore", "plain+correction", "rescore+correction"]
                    + (["rescore_unverified+correction"] if v.verify_queries > 0 else [])
                    + (["redecode", "redecode+correction"] if v.redecode_below_logprob is not None else []))
    if any(x.startswith("redecode") for x in variants) and v.redecode_below_logprob is None:
        raise ValueError("bench voice: the redecode variants need voice.redecode_below_logprob "
                         "(e.g. --set voice.redecode_below_logprob=-0.5)")
    prompt_mode = str(params.get("prompt_mode") or (v.prompt if v.prompt != "none" else "initial_prompt"))
    cat = load_catalog(cfg)
    refs = [norm(t) for t in m["transcript"]]
    bench_queries = set(refs)
    vocab = Vocabulary.build(zip(cat["queries"]["query_norm"], cat["queries"]["frequency"]),
                             cat["products"].get("title", pd.Series(dtype=str)).tolist(),
                             cat["products"].get("brand", pd.Series(dtype=str)).tolist())
    from mmpipeline.voice.textnorm import compound_lexicon

    compounds = compound_lexicon(cat["products"].get("title", pd.Series(dtype=str)).fillna("").tolist())
    result: dict[str, Any] = {
        "clips": len(m), "audio_seconds": None, "model": None, "device": None,
        "slices": {"voice": m["kind"].value_counts().to_dict(), "noise": m["noise"].value_counts().to_dict(),
                   "sample_rate": m["sample_rate"].astype(str).value_counts().to_dict()},
        "vocabulary": {"queries": len(vocab.queries), "brands": len(vocab.brands),
                       "title_words": len(vocab.title_words),
                       "bench_queries_in_log": int(sum(q in vocab.queries for q in bench_queries)),
                       "sources": {"query_log": f"sources.queries ({cfg.sources['queries'].path})" if "queries" in cfg.sources else None,
                                   "catalog": f"sources.products titles/brands ({cfg.sources['products'].path})" if "products" in cfg.sources else None},
                       "used_by": {"rescore": "words of logged queries (seen in >= 2 queries) + title words (>= 2 titles)",
                                   "correction": "query snap: logged queries; words: as rescore",
                                   "prompt": "most frequent logged queries + brands"},
                       "held_out": "per clip, its own query is removed from the log and from the word counts "
                                   "(a word only that query had is unknown); full_log keeps it"},
        "settings": {"prompt_mode": prompt_mode, "correct_below_logprob": v.correct_below_logprob,
                     "snap_confident_above": v.snap_confident_above,
                     "nbest": v.nbest, "rescore_weight": v.rescore_weight, "word_correction": v.word_correction,
                     "written_form": v.written_form,
                     "min_query_similarity": v.min_query_similarity, "min_word_similarity": v.min_word_similarity,
                     "verify": {"queries": v.verify_queries, "margin": v.verify_margin,
                                "min_similarity": v.verify_min_similarity},
                     "batch_size": v.batch_size, "beam_size": v.beam_size,
                     "redecode": {"below_logprob": v.redecode_below_logprob, "time_stretch": v.redecode_time_stretch,
                                  "temperatures": list(v.redecode_temperatures), "best_of": v.redecode_best_of}},
        "wer_normalisation": "voice.textnorm.wer_form on both sides: query_norm (NFKC, case-folded, stray "
                             "punctuation dropped) + hyphens/apostrophes dropped + number|unit split (8ft = 8 ft); "
                             "'strict': query_norm only; 'v2': voice.textnorm.wer_form_v2 on both sides (Whisper-style: "
                             "spoken numbers and fractions -> digits via Whisper's EnglishNumberNormalizer, 'by' -> x, "
                             "units to one spelling, closed compounds the catalog's titles use); "
                             "torchmetrics word_error_rate (jiwer not installed)",
        "v2_compounds": len(compounds),
    }

    # --- speed: stage path vs bare faster-whisper loop (model loads excluded from both) -------------
    # asr_models: the recognisers to measure, e.g. "[DIR]" or "[DIR, null]" (an adapted model beside the
    # base, as decode: both); default: what transcribe would use (recognizer_models)
    corrector = Corrector(vocab, v.min_query_similarity, v.min_word_similarity)
    holdout = [{r} for r in refs]
    # the logged queries checked on each clip's audio: the nearest with and without its own query
    # (verify_queries then picks per scope); part of the stage's path, so timed with it
    verify = query_verifier(corrector, v, holdout)
    models = params.get("asr_models") or recognizer_models(cfg)
    rec = make_recognizer(v, [None if x in (None, "", "null", "base") else str(x) for x in models]
                          if isinstance(models, (list, tuple)) else str(models))
    result["model"], result["device"] = rec.version, f"{rec.device}/{rec.compute_type}"
    warm = prepare(m["path"].head(2).tolist(), v)[0]
    rec.transcribe(warm)  # warm-up
    t0 = time.perf_counter()
    waves, durs, _ = prepare(m["path"].tolist(), v)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw_plain = rec.transcribe(waves, **({"verify": verify} if verify else {}))
    t_asr = time.perf_counter() - t0
    raw_stage, t_re = raw_plain, 0.0
    if v.redecode_below_logprob is not None:  # part of the stage's path: timed with it
        t0 = time.perf_counter()
        raw_stage = redecode(rec, waves, raw_plain, v)
        t_re = time.perf_counter() - t0
    t_asr_first = t_asr
    t_asr += t_re
    audio_s = float(sum(durs))
    result["audio_seconds"] = round(audio_s, 1)
    speed: dict[str, Any] = {"stage_seconds": round(t_prep + t_asr, 2), "prepare_seconds": round(t_prep, 2),
                             "asr_seconds": round(t_asr, 2), "stage_rtf": round((t_prep + t_asr) / audio_s, 4)}
    if v.redecode_below_logprob is not None:
        speed.update({"asr_first_decode_seconds": round(t_asr_first, 2), "redecode_seconds": round(t_re, 2),
                      "redecoded_clips": int(sum(r.avg_logprob is not None and r.avg_logprob < v.redecode_below_logprob
                                                 for r in raw_plain))})
    if params.get("bare_loop", True):
        from faster_whisper import WhisperModel

        # the same clips through both paths, back to back (speed_clips: a subset, to bound the run time)
        n_sp = min(len(m), int(params.get("speed_clips") or len(m)))
        sub = m["path"].head(n_sp).tolist()
        if n_sp < len(m):
            t0 = time.perf_counter()
            w_sub, d_sub, _ = prepare(sub, v)
            recognise(rec, w_sub, v, corrector=corrector)
            t_stage = time.perf_counter() - t0
            sub_audio = float(sum(d_sub))
        else:
            t_stage, sub_audio = t_prep + t_asr, audio_s
        # the same work as the stage: one bare loop per model it decodes with (two with decode: both)
        t_bare, bare_texts = 0.0, []
        for path in rec.paths:
            bare_model = WhisperModel(path, device=rec.device, compute_type=rec.compute_type,
                                      cpu_threads=v.cpu_threads, local_files_only=True)
            bare_loop(bare_model, sub[:2])  # warm-up
            t0 = time.perf_counter()
            texts_k = bare_loop(bare_model, sub)
            t_bare += time.perf_counter() - t0
            bare_texts = bare_texts or texts_k  # the first model's texts
            del bare_model
        speed.update({"speed_clips": n_sp, "speed_stage_rtf": round(t_stage / sub_audio, 4),
                      "bare_loop_seconds": round(t_bare, 2), "bare_rtf": round(t_bare / sub_audio, 4),
                      "ratio_bare_rtf_over_stage_rtf": round(t_bare / t_stage, 3)})
        result["wer_bare_loop"] = wer_slices(m.head(n_sp), bare_texts, compounds)
        if n_sp < len(m):
            result["wer_bare_loop"]["stage_plain_same_clips"] = wer(
                [wer_form(t) for t in m["transcript"].head(n_sp)], [wer_form(r.text) for r in raw_plain[:n_sp]])
    result["speed"] = speed

    # --- recognition variants ---------------------------------------------------------------------
    asr: dict[str, list] = {"plain": raw_plain}
    if any(x.startswith("prompt") for x in variants):
        for scope, excl in (("held_out", bench_queries), ("full_log", None)):
            dec = Decoding.from_config(v, vocab, exclude=excl, mode=prompt_mode)
            if scope == "full_log" and dec == Decoding.from_config(v, vocab, exclude=bench_queries, mode=prompt_mode):
                asr["prompt:full_log"] = asr["prompt:held_out"]  # no benchmark query among the prompt's
                continue
            t0 = time.perf_counter()
            asr[f"prompt:{scope}"] = rec.transcribe(waves, prompt=dec.prompt, hotwords=dec.hotwords)
            speed[f"asr_seconds_prompt_{scope}"] = round(time.perf_counter() - t0, 2)
            if scope == "held_out":
                result["prompt_example"] = (dec.prompt or dec.hotwords or "")[:300]
    if any(x.startswith("rescore") for x in variants):
        t0 = time.perf_counter()
        for scope, ho in (("held_out", holdout), ("full_log", None)):
            asr[f"rescore_unverified:{scope}"] = rescore(raw_plain, corrector, v.rescore_weight or 1.0, ho)
            # rescore = what the stage does: the n-best choice, then the logged queries checked on the audio
            asr[f"rescore:{scope}"] = verify_queries(asr[f"rescore_unverified:{scope}"], v.verify_margin,
                                                     v.verify_min_similarity, ho, k=v.verify_queries)
        speed["rescore_seconds"] = round(time.perf_counter() - t0, 2)
        result["verified_queries"] = {sc: int(sum(a.text != b.text for a, b in zip(asr[f"rescore:{sc}"],
                                                                                 asr[f"rescore_unverified:{sc}"])))
                                      for sc in ("held_out", "full_log")}
    if any(x.startswith("redecode") for x in variants):
        asr["redecode:held_out"] = rescore(raw_stage, corrector, v.rescore_weight or 1.0, holdout)
        asr["redecode:full_log"] = rescore(raw_stage, corrector, v.rescore_weight or 1.0, None)
    texts: dict[str, list[str]] = {}
    hyps: dict[str, list[list[tuple[str, float]]]] = {}
    wers: dict[str, Any] = {}
    no_itn = v.model_copy(update={"written_form": False})
    wers["plain:no_written_form"] = wer_slices(m, postprocess(raw_plain, no_itn, correction=False)["query_text"].tolist(),
                                           compounds)
    for var in variants:
        base = var.split("+")[0]
        corr = var.endswith("+correction")
        for scope in (("held_out", "full_log") if (corr or base != "plain") else ("none",)):
            raw = asr["plain"] if base == "plain" else asr[f"{base}:{scope}"]
            post = postprocess(raw, v, corrector, holdout=holdout if scope == "held_out" else None, correction=corr)
            name = var if scope == "none" else f"{var}:{scope}"
            texts[name] = post["query_text"].tolist()
            if base in ("rescore", "redecode"):
                hyps[name] = nbest_lists(raw, texts[name], corrector, holdout if scope == "held_out" else None, v)
            wers[name] = wer_slices(m, texts[name], compounds)
            if corr:
                wers[name]["corrections"] = post["correction"].value_counts().to_dict()
    result["wer"] = wers
    base = "rescore" if "rescore:held_out" in asr else "plain"  # the variant correction is measured on
    if params.get("tune_correction", True):
        t0 = time.perf_counter()
        result["correction_tuning"] = {"variant": f"{base}+correction:held_out",
                                       **tune_correction(m, asr[base if base == "plain" else f"{base}:held_out"],
                                                         v, corrector, holdout, compounds)}
        result["correction_tuning"]["seconds"] = round(time.perf_counter() - t0, 1)
    if params.get("snap_curve", True):
        by_scope = {sc: asr["plain"] if base == "plain" else asr[f"{base}:{sc}"] for sc in ("full_log", "held_out")}
        t0 = time.perf_counter()
        result["snap_curve"] = {"variant": f"{base}+correction", **snap_curve(m, by_scope, v, corrector, holdout, compounds)}
        result["snap_curve"]["seconds"] = round(time.perf_counter() - t0, 1)
    if params.get("dump"):  # per-clip texts and confidences, for error analysis
        d = m[["voice_query_id", "transcript", "kind", "noise", "sample_rate"]].copy()
        for name, raw in asr.items():
            d[f"asr:{name}"] = [r.text for r in raw]
            d[f"logprob:{name}"] = [r.avg_logprob for r in raw]
        for name, ts in texts.items():
            d[name] = ts
        d.to_csv(params["dump"], index=False)

    # --- search quality: voice vs typed -------------------------------------------------------------
    judg = cat["judgments"].copy()
    if len(judg):
        lo, hi = cfg.clean.grade_min, cfg.clean.grade_max
        judg["gain"] = ((judg["grade"] - lo) / (hi - lo)).clip(0, 1) if hi > lo else judg["grade"]
        rankers = list(params.get("rankers") or ["bm25", "champion"])
        taus = [float(t) for t in (params["nbest_search"] if params.get("nbest_search") is not None else [0.1, 0.3])]
        all_texts = refs + [t for ts in texts.values() for t in ts] + \
            [t for hs in hyps.values() for h in hs for t, _ in h]
        ndcg: dict[str, Any] = {}
        for rk in rankers:
            try:
                ranked = (rank_bm25(cat["products"], all_texts) if rk == "bm25" else
                          rank_fuzzy(cat["products"], all_texts) if rk == "bm25+char" else rank_champion(cfg, all_texts))
            except Exception as e:  # noqa: BLE001 - a missing champion / lake is reported, not fatal
                ndcg[rk] = {"skipped": f"{type(e).__name__}: {str(e)[:200]}"}
                continue
            typed = ndcg_table(ranked, refs, refs, judg)
            judged = ~np.isnan(typed)
            per: dict[str, Any] = {"judged_clips": int(judged.sum())}
            systems = {"typed": typed, **{f"voice:{n}": ndcg_table(ranked, refs, ts, judg) for n, ts in texts.items()}}
            idx = None
            if rk == "bm25" and hyps:
                from mmpipeline.retrieval import BM25Index

                idx = BM25Index(cat["products"]["product_id"].tolist(), cat["products"]["title"].fillna("").tolist())
            for n, hs in hyps.items():  # search with the n-best list: BM25 score fusion (bm25), else rank fusion
                for tau in taus:
                    fused = nbest_search(hs, tau, ranked, idx)
                    keyed = {f"#{i}": r for i, r in enumerate(fused)}
                    systems[f"voice:{n}:nbest_search@{tau}"] = ndcg_table(keyed, refs, list(keyed), judg)
            for sname, arr in systems.items():
                row: dict[str, Any] = {"all": round(float(np.nanmean(arr[judged])), 4)}
                for kind in ("neural", "formant"):
                    sel = judged & (m["kind"].to_numpy() == kind)
                    val = float(np.nanmean(arr[sel])) if sel.any() else float("nan")
                    row[kind] = round(val, 4)
                    if sname != "typed":
                        t_val = float(np.nanmean(typed[sel])) if sel.any() else float("nan")
                        row[f"{kind}_ratio_to_typed"] = round(val / t_val, 3) if t_val else None
                per[sname] = row
            ndcg[rk] = per
        result["ndcg_at_10"] = ndcg
    return result
