"""The ``transcribe`` stage: ``silver.voice_queries`` -> ``gold.voice_transcripts`` + ``gold.voice_features``.

Per clip: decode (soundfile), down-mix, resample to 16 kHz, loudness-normalise, trim silence
(:mod:`mmpipeline.voice.audio`); MFCC summary (:mod:`mmpipeline.voice.features`); Whisper with the
catalog prompt (:mod:`mmpipeline.voice.asr`, :mod:`mmpipeline.voice.vocab`).

Incremental like the embed stage: a clip is recognised again only when its audio hash or the
recogniser version changes (``asr_version`` = model fingerprint + decoding settings + prompt);
features only when the audio hash or the feature version changes. The correction against the query
log and catalog vocabulary is cheap and re-applied to every stored transcript each run (the log
changes daily); rows whose result is unchanged are not rewritten. ``--full-refresh`` recomputes all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mmpipeline.config import Config, VoiceConfig
from mmpipeline.context import RunContext, StageError

log = logging.getLogger(__name__)

TRANSCRIPTS = "gold.voice_transcripts"
FEATURES = "gold.voice_features"


# ------------------------------------------------------------------------------------ building blocks


def load_vocabulary(lake) -> "Any":
    """The shop's vocabulary from silver.queries (text, frequency) and silver.products (titles, brands)."""
    from mmpipeline.voice.vocab import Vocabulary

    queries: list[tuple[str, int]] = []
    titles: list[str] = []
    brands: list[str] = []
    if lake.exists("silver.queries"):
        q = lake.read_pandas("silver.queries", columns=["query_norm", "frequency"])
        queries = list(zip(q["query_norm"].fillna(""), q["frequency"].fillna(1).astype(int)))
    if lake.exists("silver.products"):
        p = lake.read_pandas("silver.products", columns=["title", "brand"])
        titles = p["title"].dropna().tolist()
        brands = p["brand"].dropna().tolist()
    return Vocabulary.build(queries, titles, brands)


@dataclass
class Decoding:
    """What is fed to Whisper besides the audio: prompt / hotwords from the vocabulary."""

    prompt: str | None
    hotwords: str | None

    @classmethod
    def from_config(cls, v: VoiceConfig, vocab, exclude: set[str] | None = None, mode: str | None = None) -> "Decoding":
        mode = mode or v.prompt
        prompt = hot = None
        if vocab is not None and mode in ("initial_prompt", "both"):
            prompt = vocab.prompt(v.prompt_queries, v.prompt_brands, v.prompt_max_chars, exclude=exclude) or None
        if vocab is not None and mode in ("hotwords", "both"):
            hot = vocab.hotwords(v.prompt_brands) or None
        return cls(prompt, hot)

    def fingerprint(self, v: VoiceConfig, model_version: str, compute_type: str) -> str:
        payload = json.dumps({"model": model_version, "compute": compute_type, "beam": v.beam_size,
                              "nbest": v.nbest, "rescore": v.rescore_weight,
                              "prompt": self.prompt, "hotwords": self.hotwords, "lufs": v.target_lufs,
                              "stretch": v.time_stretch,
                              **({"redecode": [v.redecode_below_logprob, v.redecode_time_stretch,
                                               list(v.redecode_temperatures), v.redecode_best_of,
                                               v.redecode_max_compression_ratio]}
                                 if v.redecode_below_logprob is not None else {}),
                              "trim": v.trim_db,
                              **({"verify": [v.verify_queries, v.verify_margin, v.verify_min_similarity]}
                                 if v.verify_queries > 0 else {})}, sort_keys=True)
        return f"{model_version}/{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def make_recognizer(v: VoiceConfig, models: Sequence[str | None] | str | None = None):
    """The recogniser of ``voice`` settings for ``models`` (default ``[voice.model]``): what
    :func:`mmpipeline.voice.adapt.recognizer_models` picked (the promoted adapted Whisper, and the base
    one beside it with ``voice.adapt.decode: both``). Several models: an :class:`EnsembleRecognizer`."""
    from mmpipeline.voice.asr import EnsembleRecognizer, Recognizer

    if models is None or isinstance(models, str):
        models = [models]
    recs = [Recognizer(m or v.model, device=v.device, compute_type=v.compute_type, cpu_threads=v.cpu_threads,
                       batch_size=v.batch_size, beam_size=v.beam_size, allow_download=v.allow_download,
                       nbest=v.nbest if v.rescore_weight > 0 else 1) for m in models]
    return recs[0] if len(recs) == 1 else EnsembleRecognizer(recs)


def recognise(rec, waves: Sequence[np.ndarray], v: VoiceConfig, prompt: str | None = None,
              hotwords: str | None = None, corrector=None) -> list:
    """Recognise the clips; the low-confidence ones (best avg log-prob below
    ``voice.redecode_below_logprob``) are decoded again -- a time-stretched copy (beam search) and/or
    temperature samples -- and every hypothesis joins the clip's n-best list (best avg log-prob
    first), for the vocabulary rescoring to choose from. With a ``corrector`` and
    ``voice.verify_queries``, the logged queries nearest each clip's n-best list are scored on its
    audio (:func:`query_verifier`)."""
    verify = query_verifier(corrector, v)
    raw = rec.transcribe(waves, prompt=prompt, hotwords=hotwords, **({"verify": verify} if verify else {}))
    return redecode(rec, waves, raw, v, prompt, hotwords)


def recognise_queries(rec, waves: Sequence[np.ndarray], v: VoiceConfig, vocab, dec: Decoding) -> tuple[list, Any]:
    """What ``transcribe`` and ``search --audio`` recognise: :func:`recognise` with the logged queries
    checked on the audio, then the n-best hypothesis the vocabulary explains best
    (:func:`~mmpipeline.voice.vocab.rescore`), or the logged query the audio supports about as well
    (:func:`~mmpipeline.voice.vocab.verify_queries`), is the recognised text. The stage stores it (a
    re-run re-uses it; the correction is re-applied every run), so queries logged after a clip was
    recognised are checked when it is recognised again. Returns (recognitions, the corrector or None)."""
    from mmpipeline.voice.vocab import Corrector, rescore, verify_queries

    corrector = Corrector(vocab, v.min_query_similarity, v.min_word_similarity) if v.correction else None
    chooser = corrector or (Corrector(vocab) if v.rescore_weight > 0 or v.verify_queries > 0 else None)
    raw = recognise(rec, waves, v, prompt=dec.prompt, hotwords=dec.hotwords, corrector=chooser)
    chosen = verify_queries(rescore(raw, chooser, v.rescore_weight), v.verify_margin, v.verify_min_similarity,
                            k=v.verify_queries)
    return chosen, corrector


def query_verifier(corrector, v: VoiceConfig, holdout: Sequence[set[str] | None] | None = None):
    """The ``verify`` callback of :meth:`mmpipeline.voice.asr.Recognizer.transcribe`: per clip the
    ``voice.verify_queries`` logged queries nearest its n-best list with at least
    ``voice.verify_min_similarity`` (``holdout``: also the nearest without the clip's held-out
    queries, so a benchmark can measure both). None when off."""
    k, floor = int(v.verify_queries), float(v.verify_min_similarity)
    if corrector is None or k <= 0:
        return None

    def verify(recs, start: int):
        out = []
        for j, r in enumerate(recs):
            nb = r.nbest or ([(r.text, r.avg_logprob)] if r.avg_logprob is not None else [])
            cs = dict(corrector.query_candidates(nb, k))
            if holdout is not None and holdout[start + j]:
                cs.update(corrector.query_candidates(nb, k, exclude=holdout[start + j]))
            # only what verify_queries could take is scored (each text costs a decoder pass)
            out.append([(q, sim) for q, sim in cs.items() if sim >= floor])
        return out

    return verify


def redecode(rec, waves: Sequence[np.ndarray], raw: list, v: VoiceConfig, prompt: str | None = None,
             hotwords: str | None = None) -> list:
    """The second decode of :func:`recognise`, given the first one's results ``raw``."""
    from dataclasses import replace

    thr = v.redecode_below_logprob
    if thr is None:
        return raw
    low = [i for i, r in enumerate(raw) if r.avg_logprob is not None and r.avg_logprob < thr]
    if not low:
        return raw
    extra = []
    if v.redecode_time_stretch and abs(v.redecode_time_stretch - 1.0) > 1e-6:
        import torch

        from mmpipeline.voice.audio import time_stretch

        slow = [time_stretch(torch.from_numpy(np.asarray(waves[i], np.float32))[None], v.redecode_time_stretch)[0].numpy()
                for i in low]
        extra.append(rec.transcribe(slow, prompt=prompt, hotwords=hotwords))
    for j, t in enumerate(v.redecode_temperatures):
        extra.append(rec.transcribe([waves[i] for i in low], prompt=prompt, hotwords=hotwords, temperature=float(t),
                                    best_of=v.redecode_best_of, seed=j))
    from faster_whisper.transcribe import get_compression_ratio

    out = list(raw)
    for n, i in enumerate(low):
        hyps: dict[str, float] = {}
        for k, r in enumerate([raw[i]] + [e[n] for e in extra]):
            for text, lp in (r.nbest or [(r.text, r.avg_logprob)]):
                # faster-whisper's guard: a second decode's repetition loop ("national national ...")
                # scores a high log-prob; it is dropped
                if k and text and get_compression_ratio(text) > v.redecode_max_compression_ratio:
                    continue
                if lp is not None and (text not in hyps or lp > hyps[text]):
                    hyps[text] = lp
        ranked = sorted(hyps.items(), key=lambda kv: -kv[1])
        if ranked:
            out[i] = replace(raw[i], text=ranked[0][0], avg_logprob=ranked[0][1], nbest=ranked)
    log.info("asr: %d of %d clips below avg log-prob %.2f decoded again (%d extra decode(s))", len(low), len(raw),
             thr, len(extra))
    return out


def prepare(paths: Sequence[str], v: VoiceConfig, with_features: bool = True):
    """Decode + preprocess each clip: (16 kHz waves, durations, MFCC summaries or None)."""
    from mmpipeline.voice.audio import decode_file, preprocess
    from mmpipeline.voice.features import mfcc_summary

    waves, durs, feats = [], [], []
    for p in paths:
        try:
            clip = decode_file(p)
            w = preprocess(clip, target_lufs=v.target_lufs, trim_db=v.trim_db, stretch=v.time_stretch)
        except Exception as e:  # noqa: BLE001 - the file changed since the clean stage checked it
            log.warning("voice: cannot decode %s any more (%s: %s); skipped", p, type(e).__name__, e)
            waves.append(None)
            durs.append(0.0)
            feats.append(None)
            continue
        waves.append(w)
        durs.append(clip.duration)
        feats.append(mfcc_summary(w) if with_features else None)
    return waves, durs, feats


def postprocess(raw: Sequence[Any], v: VoiceConfig, corrector=None, holdout: Sequence[set[str] | None] | None = None,
                correction: bool | None = None) -> pd.DataFrame:
    """ASR results -> normalised text (sizes in written form), correction, the query text used for
    search, usable flag."""
    from mmpipeline.voice.textnorm import written_form
    from mmpipeline.voice.vocab import correct_all, norm

    texts = [written_form(r.text) if v.written_form else norm(r.text) for r in raw]
    lps = [r.avg_logprob for r in raw]
    use_corr = v.correction if correction is None else correction
    corr = correct_all(corrector if use_corr else None, texts, lps, v.correct_below_logprob, holdout,
                       words=v.word_correction, snap_above=v.snap_confident_above)
    out = pd.DataFrame({
        "raw_text": [r.text for r in raw], "text_norm": texts, "avg_logprob": lps,
        "no_speech_prob": [r.no_speech_prob for r in raw], "correction": [c.method for c in corr],
        "query_text": [c.text for c in corr],
    })
    nsp = out["no_speech_prob"].fillna(1.0)
    out["usable"] = (out["query_text"].str.len() > 0) & (nsp <= v.max_no_speech_prob)
    return out


# ----------------------------------------------------------------------------------------- stage


def _read(lake, name: str) -> pd.DataFrame | None:
    return lake.read_pandas(name) if lake.exists(name) else None


def run(ctx: RunContext) -> dict[str, Any]:
    from mmpipeline.ops import print_table
    from mmpipeline.voice.adapt import recognizer_models
    from mmpipeline.voice.features import FEATURE_VERSION

    cfg: Config = ctx.cfg
    v = cfg.voice
    lake = ctx.lake
    if "voice_queries" not in cfg.sources:
        log.info("transcribe: no voice_queries source configured; nothing to do")
        return {"skipped": "no voice_queries source"}
    clips = _read(lake, "silver.voice_queries")
    if clips is None:
        raise StageError("silver.voice_queries does not exist: run `mmpipeline run clean` first")
    clips = clips.sort_values("query_id", kind="stable").reset_index(drop=True)
    if v.max_clips:
        clips = clips.head(int(v.max_clips))
    t_start = time.perf_counter()
    vocab = load_vocabulary(lake)
    dec = Decoding.from_config(v, vocab)
    rec = make_recognizer(v, recognizer_models(cfg))
    asr_version = dec.fingerprint(v, rec.version, rec.compute_type)
    old = _read(lake, TRANSCRIPTS)
    old_f = _read(lake, FEATURES)
    now = dt.datetime.now(dt.timezone.utc)

    def stale(prev: pd.DataFrame | None, col: str, version: str) -> pd.Series:
        if ctx.full_refresh or prev is None or not len(prev):
            return pd.Series(True, index=clips.index)
        m = clips[["query_id", "audio_hash"]].merge(prev[["query_id", "audio_hash", col]], how="left",
                                                    on=["query_id", "audio_hash"])
        return pd.Series((m[col] != version).to_numpy(), index=clips.index)

    need_asr = stale(old, "asr_version", asr_version)
    need_feat = stale(old_f, "feature_version", FEATURE_VERSION)
    todo = clips[need_asr | need_feat]
    t0 = time.perf_counter()
    waves, durs, feats = prepare(list(todo["audio_path"]), v)
    t_prep = time.perf_counter() - t0
    pos = {q: i for i, q in enumerate(todo["query_id"])}
    ok = pd.Series([waves[pos[q]] is not None for q in todo["query_id"]], index=todo.index)
    asr_rows = todo[need_asr[todo.index] & ok]
    t0 = time.perf_counter()
    raw, corrector = recognise_queries(rec, [waves[pos[q]] for q in asr_rows["query_id"]], v, vocab, dec)
    t_asr = time.perf_counter() - t0
    verified = sum(r.text in (getattr(r, "checked", None) or {}) for r in raw)  # a logged query was taken
    audio_s = float(sum(durs))

    # transcripts: new recognitions + the stored ones still valid, all (re-)corrected
    new = pd.DataFrame({"query_id": asr_rows["query_id"].to_numpy(), "audio_hash": asr_rows["audio_hash"].to_numpy(),
                        "raw_text": [r.text for r in raw], "avg_logprob": [r.avg_logprob for r in raw],
                        "no_speech_prob": [r.no_speech_prob for r in raw],
                        "duration_s": [durs[pos[q]] for q in asr_rows["query_id"]],
                        "asr_version": asr_version, "run_date": ctx.run_date, "transcribed_at": now})
    keep_ids = set(clips["query_id"][~need_asr])
    kept = (old[old["query_id"].isin(keep_ids)][new.columns.tolist()] if old is not None and keep_ids
            else new.iloc[:0])
    allt = pd.concat([kept, new], ignore_index=True) if len(kept) else new

    class _R:  # the stored recognitions as ASR results
        def __init__(self, r):
            self.text, self.avg_logprob, self.no_speech_prob = r.raw_text, r.avg_logprob, r.no_speech_prob

    post = postprocess([_R(r) for r in allt.itertuples()], v, corrector)
    allt = pd.concat([allt.reset_index(drop=True), post.drop(columns=["raw_text", "avg_logprob", "no_speech_prob"])],
                     axis=1)
    allt["asr_model"] = rec.path
    if old is not None and len(old):  # rows whose result is unchanged keep their run date and time
        prev = old.set_index("query_id")
        for i in allt.index[allt["query_id"].isin(prev.index)]:
            p = prev.loc[allt.at[i, "query_id"]]
            same_asr = p["asr_version"] == allt.at[i, "asr_version"] and p["audio_hash"] == allt.at[i, "audio_hash"]
            if same_asr and p["query_text"] == allt.at[i, "query_text"] and p["correction"] == allt.at[i, "correction"]:
                allt.at[i, "run_date"] = p["run_date"]
                allt.at[i, "transcribed_at"] = p["transcribed_at"]
            elif same_asr:  # only the correction changed (new vocabulary): recognised then, corrected today
                allt.at[i, "run_date"] = ctx.run_date
    m = lake.merge(TRANSCRIPTS, allt, keys=["query_id"], delete_missing=True,
                   metadata={"stage": "transcribe", "run_date": str(ctx.run_date), "asr_version": asr_version})

    # features
    frows = todo[need_feat[todo.index] & ok]
    fnew = pd.DataFrame({"query_id": frows["query_id"].to_numpy(), "audio_hash": frows["audio_hash"].to_numpy(),
                         "feature_version": FEATURE_VERSION,
                         "dim": [len(feats[pos[q]]) for q in frows["query_id"]],
                         "vector": [feats[pos[q]].tolist() for q in frows["query_id"]],
                         "duration_s": [durs[pos[q]] for q in frows["query_id"]],
                         "run_date": ctx.run_date, "computed_at": now})
    fkeep = (old_f[old_f["query_id"].isin(set(clips["query_id"][~need_feat]))] if old_f is not None
             else fnew.iloc[:0])
    fall = pd.concat([fkeep[fnew.columns.tolist()], fnew], ignore_index=True) if len(fkeep) else fnew
    mf = lake.merge(FEATURES, fall, keys=["query_id"], delete_missing=True,
                    metadata={"stage": "transcribe", "run_date": str(ctx.run_date)})

    total = time.perf_counter() - t_start
    rtf = (t_prep + t_asr) / audio_s if audio_s else None
    by_corr = allt["correction"].value_counts().to_dict()
    summary = {"clips": len(clips), "transcribed": len(asr_rows), "unchanged": int((~need_asr).sum()),
               "features_computed": len(frows), "asr_version": asr_version, "device": rec.device,
               "compute_type": rec.compute_type, "verified_queries": verified, "corrections": by_corr,
               "usable": int(allt["usable"].sum()), "audio_seconds": round(audio_s, 1),
               "real_time_factor": round(rtf, 4) if rtf else None,
               "merge_transcripts": {k: v_ for k, v_ in m.items() if k.startswith("num_target")},
               "merge_features": {k: v_ for k, v_ in mf.items() if k.startswith("num_target")},
               # per step; "seconds" is the CLI's wall time of the whole stage (mmpipeline.cli.run_stage)
               "step_seconds": {"prepare": round(t_prep, 2), "asr": round(t_asr, 2), "total": round(total, 2)}}
    print_table(f"transcribe: {ctx.run_date} ({rec.device}/{rec.compute_type})", ["step", "value"], [
        ["voice queries", len(clips)], ["transcribed now", len(asr_rows)], ["unchanged (skipped)", summary["unchanged"]],
        ["features computed", len(frows)], ["logged query checked on the audio and taken", verified],
        ["usable as search queries", summary["usable"]],
        ["corrections", by_corr], ["real-time factor (prepare+asr)", summary["real_time_factor"] or "n/a"]])
    return summary
