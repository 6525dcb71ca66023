"""``mmpipeline search --audio FILE``: check, transcribe (catalog-aware) and search a spoken query."""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from mmpipeline.config import Config
from mmpipeline.context import StageError

log = logging.getLogger(__name__)


def hypothesis_weights(scores: Sequence[float], temperature: float) -> np.ndarray:
    """Weights of a clip's n-best hypotheses from their scores (avg log-prob + rescoring bonus):
    ``softmax(score / temperature)``; temperature 0 puts all weight on the best."""
    s = np.asarray(scores, float)
    if not len(s):
        return s
    if temperature <= 0:
        w = np.zeros(len(s))
        w[int(np.argmax(s))] = 1.0
        return w
    e = np.exp((s - s.max()) / float(temperature))
    return e / e.sum()


def fuse_scores(score_rows: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of per-hypothesis score vectors over the same products (e.g. BM25 of each
    hypothesis against the catalog): a product every likely hypothesis matches ranks first."""
    out = np.zeros_like(np.asarray(score_rows[0], float))
    for row, w in zip(score_rows, weights):
        if w > 0:
            out += w * np.asarray(row, float)
    return out


def fuse_rankings(rankings: Sequence[Sequence[str]], weights: Sequence[float], k: int = 10,
                  rrf_k: int = 60) -> list[str]:
    """Weighted reciprocal-rank fusion of the rankings of a clip's hypotheses (any ranker)."""
    score: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        if w <= 0:
            continue
        for r, pid in enumerate(ranking):
            score[pid] = score.get(pid, 0.0) + w / (rrf_k + r + 1)
    return [p for p, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def recognise_file(cfg: Config, path: str) -> dict[str, Any]:
    """The same checks, preprocessing, prompt and correction as the transcribe stage, for one file."""
    from mmpipeline.lake import Lake
    from mmpipeline.voice.audio import check_clip
    from mmpipeline.voice.adapt import recognizer_models
    from mmpipeline.voice.stage import Decoding, load_vocabulary, make_recognizer, postprocess, prepare, recognise_queries

    v = cfg.voice
    real = os.path.realpath(path)
    res = check_clip(os.path.dirname(real), os.path.basename(real), max_bytes=v.max_bytes,
                     min_duration_s=v.min_duration_s, max_duration_s=v.max_duration_s, silence_dbfs=v.silence_dbfs)
    if res["audio_status"] != "ok":
        raise StageError(f"{path}: {res['audio_status']}: {res['audio_detail']}")
    lake = Lake(cfg.lake.root, engine="delta-rs")
    vocab = load_vocabulary(lake)
    waves, durs, _ = prepare([real], v, with_features=False)
    raw, corrector = recognise_queries(make_recognizer(v, recognizer_models(cfg)), waves, v, vocab,
                                       Decoding.from_config(v, vocab))
    post = postprocess(raw, v, corrector).iloc[0].to_dict()
    post["duration_s"] = durs[0]
    r = raw[0]
    # Whisper's own best hypothesis, when a logged query checked on the audio replaced it
    post["whisper_text"] = r.nbest[0][0] if r.text in (r.checked or {}) and r.nbest else None
    return post


def search_audio(cfg: Config, path: str, k: int = 10) -> dict[str, Any]:
    from mmpipeline.score.search import search

    r = recognise_file(cfg, path)
    if r.get("whisper_text"):
        print(f"heard: {r['whisper_text']!r} -> the logged query {r['raw_text']!r} fits the audio about as well "
              f"(forced avg log-prob {r['avg_logprob']:.2f}, no-speech {r['no_speech_prob']:.2f})")
    else:
        print(f"heard: {r['raw_text']!r} (avg log-prob {r['avg_logprob']:.2f}, no-speech {r['no_speech_prob']:.2f})")
    if r["correction"] != "none" and r["query_text"] != r["raw_text"]:
        print(f"  -> corrected ({r['correction']}): {r['query_text']!r}")
    if not r["usable"]:
        raise StageError(f"{path}: no usable speech recognised (no-speech probability {r['no_speech_prob']:.2f})")
    out = search(cfg, r["query_text"], k=k)
    return {**out, "recognised": r}
