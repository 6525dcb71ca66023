"""The recogniser adapted to the shop (``mmpipeline run tune-asr``).

Generic Whisper tiny.en mishears formant (robotic, accented) speech badly and never saw the shop's
words. No recordings of real shoppers exist offline, but the shop's query log does, and espeak-ng
(``espeakng-loader``: the library and its voice data as a wheel from PyPI) can speak it. This stage:

1. picks the texts: distinct queries of ``silver.queries`` in the **train** split of ``rank.split``
   (so no query the ranker is validated or tested on is trained on), never the reference transcript
   of a clip in ``silver.voice_queries`` (those clips are what ``bench voice`` measures), a
   deterministic sample of ``voice.adapt.max_texts``; ``valid_texts`` validation-split queries for the
   check;
2. speaks each with an espeak-ng voice, speed, noise (white, pink or brown at a drawn SNR) and storage
   sample rate drawn from ``voice.adapt`` (seeded), quantised to 16-bit, then runs the pipeline's own
   preprocessing (:func:`mmpipeline.voice.audio.preprocess`) and Whisper's feature extractor, exactly
   as ``transcribe`` will;
3. fingerprints texts, labelled clips, base model and every knob: a registered version with the same
   fingerprint is reused (a re-run of a date trains nothing), and a promoted version younger than
   ``refresh_days`` is kept when only the query log moved;
4. converts the CTranslate2 model to PyTorch (:mod:`mmpipeline.voice.ct2`) and fine-tunes the encoder
   (``train_part``; the decoder's language model is kept) with cross-entropy on the transcript tokens
   after Whisper's English-only prompt (start-of-transcript, no-timestamps), AdamW with linear
   warm-up/decay, on ``device`` (auto: CUDA when present), then writes the weights back into a
   CTranslate2 directory faster-whisper loads like the original;
5. measures greedy word error rate (``wer_form_v2``) of the base and the tuned model on the synthetic
   validation clips and, when ``silver.voice_queries`` holds clips with a reference transcript, on up
   to ``max_labelled_clips`` of those real clips;
6. logs params, per-step loss and the WERs to one MLflow run, registers the folder as a new version of
   ``<mlflow.model_name>-asr`` and moves ``voice.adapt.alias`` to it only when it lowers the synthetic
   WER by more than ``min_gain`` and does not raise the labelled clips' WER by more than
   ``max_labelled_regression``.

``transcribe``, ``search --audio`` and ``bench voice`` recognise with the promoted version
(:func:`recognizer_models`), by default beside the base model (``decode: both``: per clip the surer
of the two wins, see :class:`mmpipeline.voice.asr.EnsembleRecognizer`); its directory name and
``adaptation.json`` enter the recogniser version, so every clip is transcribed again, once, when a new
version is promoted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config, VoiceAdaptConfig
    from mmpipeline.context import RunContext

log = logging.getLogger(__name__)

STAGE = "tune-asr"
ARTIFACT = "asr"
ADAPTATION_FILE = "adaptation.json"
FINGERPRINT_TAG = "input_fingerprint"  # as mmpipeline.embed.registry's (the same helpers find versions)
PROMOTED_TAG = "promoted"
NOISE_KINDS = ("white", "pink", "brown")


def registered_name(cfg: "Config") -> str:
    return f"{cfg.mlflow.model_name}-asr"


# ------------------------------------------------------------------------------ speech synthesis
class _Espeak:
    """espeak-ng through ctypes (the library and data of the ``espeakng-loader`` wheel), synchronous
    synthesis into memory. One per process; calls are serialised (espeak-ng is not re-entrant)."""

    _lock = threading.Lock()
    _inst: "_Espeak | None" = None

    def __init__(self) -> None:
        import ctypes

        import espeakng_loader

        self._ct = ctypes
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        # AUDIO_OUTPUT_SYNCHRONOUS = 2: espeak_Synth returns when the callback has had every sample
        self.rate = int(self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0))
        if self.rate <= 0:
            raise RuntimeError("espeak-ng did not initialise (espeakng-loader's data folder missing?)")
        self._chunks: list[np.ndarray] = []
        cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def _cb(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = cb_type(_cb)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self._cb)

    @classmethod
    def get(cls) -> "_Espeak":
        with cls._lock:
            if cls._inst is None:
                cls._inst = cls()
            return cls._inst

    def say(self, text: str, voice: str, speed: float = 1.0) -> tuple[np.ndarray, int]:
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r} (voice.adapt.voices; e.g. en-us, en-us+f3, en, "
                                 "en+f2, en-gb-scotland, en-029)")
            self.lib.espeak_SetParameter(1, int(round(175 * speed)), 0)  # espeakRATE, words per minute
            self._chunks = []
            b = text.encode("utf-8")
            self.lib.espeak_Synth(b, len(b) + 1, 0, 1, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            x = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return x.astype(np.float32) / 32768.0, self.rate


def synthesise(text: str, voice: str, speed: float = 1.0) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng's ``voice`` at ``speed`` x the normal rate: (float32 samples, rate)."""
    return _Espeak.get().say(text, voice, speed)


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white, pink (1/f power) or brown (1/f^2) noise."""
    w = rng.standard_normal(n)
    if kind != "white":
        f = np.fft.rfft(w)
        fr = np.arange(len(f)) + 1.0
        w = np.fft.irfft(f / (np.sqrt(fr) if kind == "pink" else fr), n)
    return w / (w.std() + 1e-12)


def render(text: str, a: "VoiceAdaptConfig", rng: np.random.Generator):
    """One augmented clip as it would be stored: (Clip at the drawn rate, 16-bit quantised; metadata)."""
    import torch
    import torchaudio.functional as AF

    from mmpipeline.voice.audio import Clip

    voice = str(rng.choice(a.voices))
    speed = float(rng.choice(a.speeds))
    snr = a.noise_snr_db[int(rng.integers(len(a.noise_snr_db)))]
    kind = str(rng.choice(NOISE_KINDS))
    store = int(rng.choice(a.sample_rates))
    x, sr = synthesise(text, voice, speed)
    if snr is not None and len(x):
        x = x + noise(kind, len(x), rng) * math.sqrt(float(np.mean(x ** 2)) / 10 ** (snr / 10))
    t = torch.from_numpy(x.astype(np.float32))[None]
    if store != sr:
        t = AF.resample(t, sr, store)
    t = torch.round(t.clamp(-1, 1) * 32767) / 32767
    return Clip(t[0].numpy()[:, None], store, "WAV"), {"voice": voice, "speed": speed, "snr_db": snr,
                                                        "noise": kind if snr is not None else None, "sample_rate": store}


def speak_all(texts: Sequence[str], a: "VoiceAdaptConfig", v, seed: int) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Render and preprocess (as ``transcribe`` does) one clip per text: (16 kHz waves, metadata)."""
    from mmpipeline.voice.audio import preprocess

    rng = np.random.default_rng(seed)
    waves, meta = [], []
    for t in texts:
        clip, m = render(t, a, rng)
        waves.append(preprocess(clip, target_lufs=v.target_lufs, trim_db=v.trim_db))
        meta.append(m)
    return waves, pd.DataFrame(meta)


# ------------------------------------------------------------------------------ data
def pick_texts(queries: pd.DataFrame, exclude: set[str], cfg: "Config") -> tuple[list[str], list[str]]:
    """(training texts, validation texts): distinct query texts of the train / valid split, never one in
    ``exclude`` (normalised), each a deterministic hash-ordered sample."""
    from mmpipeline.rank.data import assign_split
    from mmpipeline.voice.vocab import norm

    a = cfg.voice.adapt
    q = queries.dropna(subset=["query"]).copy()
    q["text"] = q["query"].astype(str).str.strip()
    q = q[(q["text"] != "") & ~q["text"].map(norm).isin(exclude)]
    q = q.drop_duplicates("text")
    q["split"] = assign_split(q["query_id"], cfg.rank.split).to_numpy()
    q["h"] = q["text"].map(lambda s: hashlib.sha256(f"{a.seed}:{s}".encode()).hexdigest())
    q = q.sort_values("h", kind="stable")
    return (q.loc[q["split"] == "train", "text"].head(a.max_texts).tolist(),
            q.loc[q["split"] == "valid", "text"].head(a.valid_texts).tolist())


def features(waves: Sequence[np.ndarray], n_mels: int = 80) -> np.ndarray:
    """Whisper log-mel features of each 16 kHz clip, padded to one 30 s window: as the recogniser computes them."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    fe = FeatureExtractor(feature_size=n_mels)
    return np.stack([pad_or_trim(fe(np.asarray(w, np.float32)[: 30 * 16000])[..., :-1]) for w in waves]).astype(np.float32)


def token_ids(tokenizer, text: str) -> list[int]:
    """Decoder sequence: start-of-transcript, no-timestamps, the text's tokens, end-of-text."""
    from mmpipeline.voice.ct2 import EOT, NO_TIMESTAMPS, SOT

    return [SOT, NO_TIMESTAMPS, *tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids, EOT]


# ------------------------------------------------------------------------------ training
def fine_tune(model, waves: Sequence[np.ndarray], seqs: Sequence[list[int]], a: "VoiceAdaptConfig", device: str,
              log_metric=None, progress: bool = True) -> list[dict[str, float]]:
    """Cross-entropy on the transcript tokens (the two prompt tokens are not targets); the encoder only
    with ``train_part=encoder``. Returns the mean loss per epoch."""
    import torch

    from mmpipeline.voice.ct2 import EOT

    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model.to(device)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad = (a.train_part == "all" or name.startswith("model.encoder.")) and "embed_positions" not in name
        if p.requires_grad:
            params.append(p)
    n = len(seqs)
    bs = max(1, int(a.batch_size))
    per_epoch = max(1, int(math.ceil(n / bs)))
    steps = max(1, int(math.ceil(n / bs * a.epochs)))
    warm = max(1, steps // 10)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    n_mels = model.config.num_mel_bins
    model.train()
    order: list[int] = []
    history: list[dict[str, float]] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        if not order:
            order = list(rng.permutation(n))
        idx = [order.pop() for _ in range(min(bs, len(order)))]
        x = torch.from_numpy(features([waves[i] for i in idx], n_mels)).to(device)
        width = max(len(seqs[i]) for i in idx) - 1
        inp = torch.full((len(idx), width), EOT, dtype=torch.long)
        lab = torch.full((len(idx), width), -100, dtype=torch.long)
        for j, i in enumerate(idx):
            s = seqs[i]
            inp[j, :len(s) - 1] = torch.tensor(s[:-1])
            lab[j, 1:len(s) - 1] = torch.tensor(s[2:])  # the token after no-timestamps onwards
        out = model(input_features=x, decoder_input_ids=inp.to(device), labels=lab.to(device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if log_metric:
            log_metric("train_loss", losses[-1], step)
        if progress and (step % 10 == 0 or step == steps - 1):
            log.info("tune-asr: step %d/%d loss %.3f (%.0fs)", step + 1, steps, float(np.mean(losses[-10:])),
                     time.perf_counter() - t0)
        if (step + 1) % per_epoch == 0 or step == steps - 1:
            history.append({"epoch": len(history) + 1, "loss": round(float(np.mean(losses[-per_epoch:])), 4)})
    model.eval()
    return history


# ------------------------------------------------------------------------------ evaluation
def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate after the v2 normalisation (case, punctuation, spelled numbers), as ``bench voice``."""
    from torchmetrics.functional.text import word_error_rate

    from mmpipeline.voice.textnorm import wer_form_v2

    if not refs:
        return float("nan")
    return float(word_error_rate([wer_form_v2(h) for h in hyps], [wer_form_v2(r) for r in refs]))


def greedy_wer(model_dir: str, waves: Sequence[np.ndarray], refs: Sequence[str], v) -> tuple[float, list[str]]:
    from mmpipeline.voice.asr import Recognizer

    rec = Recognizer(model_dir, device=v.device, compute_type=v.compute_type, cpu_threads=v.cpu_threads,
                     batch_size=v.batch_size, beam_size=1, nbest=1)
    hyps = [r.text for r in rec.transcribe(list(waves))]
    return wer(refs, hyps), hyps


# ------------------------------------------------------------------------------ registry
def _client(cfg: "Config"):
    from mmpipeline.tracking import client

    return client(cfg)


def champion(cfg: "Config"):
    """The registered version behind ``voice.adapt.alias``, or None."""
    from mlflow.exceptions import MlflowException

    from mmpipeline.embed.registry import _store_may_exist

    if not _store_may_exist(cfg):
        return None
    try:
        return _client(cfg).get_model_version_by_alias(registered_name(cfg), cfg.voice.adapt.alias)
    except MlflowException:
        return None


def download(cfg: "Config", mv) -> str:
    """Local CTranslate2 directory of a registered version (cached under the lake root)."""
    import mlflow

    dest = Path(cfg.lake.root) / "_models" / registered_name(cfg) / f"v{mv.version}"
    folder = dest / ARTIFACT
    if not (folder / "model.bin").is_file() or not (folder / ADAPTATION_FILE).is_file():
        dest.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=ARTIFACT, dst_path=str(dest))
    return str(folder)


def recognizer_models(cfg: "Config") -> list[str | None]:
    """The models ``transcribe`` recognises with: the promoted adapted version when ``voice.adapt`` is on
    and one is promoted (followed by ``voice.model``, the base, with ``decode: both``), else ``voice.model``."""
    a = cfg.voice.adapt
    if a.enabled and a.use_in_transcribe:
        mv = champion(cfg)
        if mv is not None:
            adapted = download(cfg, mv)
            return [adapted, cfg.voice.model] if a.decode == "both" else [adapted]
    return [cfg.voice.model]


def _register(cfg: "Config", run_id: str, tags: dict[str, str], promote: bool) -> str:
    from mmpipeline.embed.registry import register_folder

    return register_folder(cfg, registered_name(cfg), ARTIFACT, run_id, tags, promote, cfg.voice.adapt.alias,
                           "Whisper (CTranslate2) adapted to the shop's queries spoken by synthetic voices "
                           "(mmpipeline tune-asr)")


def _with_fingerprint(cfg: "Config", fingerprint: str):
    from mmpipeline.embed.registry import _newest_with_fingerprint

    return _newest_with_fingerprint(cfg, registered_name(cfg), fingerprint)


def _knobs(cfg: "Config", base_version: str) -> dict[str, Any]:
    from importlib.metadata import version  # espeakng-loader's version pins the voices

    a = cfg.voice.adapt
    keep = {k: v for k, v in a.model_dump().items() if k not in ("enabled", "use_in_transcribe", "decode", "alias",
                                                                  "refresh_days", "device")}
    return {**keep, "base_model": base_version, "espeakng_loader": version("espeakng-loader"),
            "target_lufs": cfg.voice.target_lufs, "trim_db": cfg.voice.trim_db, "split": cfg.rank.split}


def fingerprint_of(knobs: dict[str, Any], train: Sequence[str], valid: Sequence[str],
                   labelled: pd.DataFrame) -> str:
    h = hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode())
    for part in (train, valid, labelled["audio_hash"].astype(str).tolist(), labelled["query"].astype(str).tolist()):
        h.update(b"\x00".join(s.encode() for s in part))
        h.update(b"\x01")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ the stage
def _read(lake, name: str, columns: list[str]) -> pd.DataFrame | None:
    return lake.read_pandas(name, columns=columns) if lake.exists(name) else None


def run(ctx: "RunContext") -> dict[str, Any]:
    """``mmpipeline run tune-asr``: adapt Whisper, track it in MLflow, register; promote when it wins."""
    import mlflow
    from tokenizers import Tokenizer

    from mmpipeline.context import StageError
    from mmpipeline.embed.runtime import resolve_device
    from mmpipeline.ops import print_table
    from mmpipeline.tracking import setup_mlflow
    from mmpipeline.voice import ct2
    from mmpipeline.voice.asr import model_version, resolve_model
    from mmpipeline.voice.audio import decode_file, preprocess
    from mmpipeline.voice.vocab import norm

    cfg, lake, v = ctx.cfg, ctx.lake, ctx.cfg.voice
    a = v.adapt
    if not a.enabled or "voice_queries" not in cfg.sources:
        why = "voice.adapt.enabled is false" if not a.enabled else "no voice_queries source"
        log.info("tune-asr: nothing to do: %s", why)
        return {"trained": False, "skipped": why}
    queries = _read(lake, "silver.queries", ["query_id", "query", "run_date"])
    if queries is None:
        raise StageError("silver.queries does not exist yet: run ingest and clean first")
    queries = queries[pd.to_datetime(queries["run_date"]).dt.date <= ctx.run_date]
    clips = _read(lake, "silver.voice_queries", ["query_id", "query", "audio_path", "audio_hash"])
    clips = clips if clips is not None else pd.DataFrame(columns=["query_id", "query", "audio_path", "audio_hash"])
    exclude = set(clips["query"].dropna().astype(str).map(norm))
    train, valid = pick_texts(queries, exclude, cfg)
    if len(train) < a.batch_size or not valid:
        raise StageError(f"tune-asr: {len(train)} training and {len(valid)} validation query texts after leaving out "
                         f"the voice clips' transcripts: too few to adapt the recogniser (rank.split, "
                         f"voice.adapt.max_texts), or set voice.adapt.enabled=false")
    labelled = (clips.dropna(subset=["query"]).sort_values("query_id", kind="stable").head(a.max_labelled_clips)
                .reset_index(drop=True))
    base_dir = resolve_model(v.model, v.allow_download)
    base_version = model_version(base_dir)
    knobs = _knobs(cfg, base_version)
    fingerprint = fingerprint_of(knobs, train, valid, labelled)
    name = registered_name(cfg)
    setup_mlflow(cfg)
    config_fp = fingerprint_of(knobs, [], [], labelled.iloc[:0])  # the knobs alone
    done = _with_fingerprint(cfg, fingerprint)
    cur = champion(cfg)
    if done is None and cur is not None and a.refresh_days > 0:
        tags = cur.tags or {}
        age = (ctx.run_date - dt.date.fromisoformat(tags.get("run_date", "1970-01-01"))).days
        if 0 <= age < a.refresh_days and tags.get("config_fingerprint") == config_fp:
            log.info("tune-asr: %s v%s was promoted %d day(s) ago (voice.adapt.refresh_days=%d): kept", name,
                     cur.version, age, a.refresh_days)
            return {"registered_model": name, "version": str(cur.version), "promoted": True, "trained": False,
                    "skipped": f"the promoted version is {age} day(s) old (refresh_days={a.refresh_days})"}
    if done is not None:  # a transaction: the same inputs never train or register a second version
        promoted = (done.tags or {}).get(PROMOTED_TAG) == "true"
        if promoted and (cur is None or str(cur.version) != str(done.version)):
            _client(cfg).set_registered_model_alias(name, a.alias, str(done.version))
        log.info("tune-asr: %s v%s was adapted on the same inputs (%s): nothing to do", name, done.version, fingerprint)
        return {"registered_model": name, "version": str(done.version), "promoted": promoted, "trained": False,
                "input_fingerprint": fingerprint, "skipped": "a recogniser adapted on the same inputs is registered"}

    device = resolve_device(a.device)
    t0 = time.perf_counter()
    tr_waves, tr_meta = speak_all(train, a, v, a.seed)
    va_waves, _ = speak_all(valid, a, v, a.seed + 1)
    lab_waves = [preprocess(decode_file(p), target_lufs=v.target_lufs, trim_db=v.trim_db)
                 for p in labelled["audio_path"]]
    synth_s = time.perf_counter() - t0
    log.info("tune-asr: %d training + %d validation clips spoken (%.0fs); %d labelled clips", len(train), len(valid),
             synth_s, len(labelled))
    base_valid, _ = greedy_wer(base_dir, va_waves, valid, v)
    base_lab = greedy_wer(base_dir, lab_waves, labelled["query"].tolist(), v)[0] if len(labelled) else None
    like = ct2.read(Path(base_dir) / "model.bin")
    model = ct2.to_torch(like)
    tok = Tokenizer.from_file(str(Path(base_dir) / "tokenizer.json"))
    seqs = [token_ids(tok, t) for t in train]
    exp_id = setup_mlflow(cfg)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"asr {ctx.run_date}") as mrun:
        mlflow.log_params({**{k: (json.dumps(x) if isinstance(x, (dict, list)) else x) for k, x in knobs.items()},
                           "n_train": len(train), "n_valid": len(valid), "n_labelled": len(labelled), "device": device})
        mlflow.set_tags({"stage": STAGE, "run_date": str(ctx.run_date), FINGERPRINT_TAG: fingerprint})
        t1 = time.perf_counter()
        history = fine_tune(model, tr_waves, seqs, a, device,
                            log_metric=lambda k, x, step: mlflow.log_metric(k, x, step=step),
                            progress=cfg.embed.progress)
        train_s = time.perf_counter() - t1
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / ARTIFACT
            folder.mkdir()
            for f in Path(base_dir).iterdir():
                if f.is_file() and f.name != "model.bin":
                    shutil.copy2(f, folder / f.name)
            ct2.save_like(model.cpu(), like, folder / "model.bin")
            (folder / ADAPTATION_FILE).write_text(json.dumps(
                {"registered_model": name, "input_fingerprint": fingerprint, "base_model": base_version,
                 "run_date": str(ctx.run_date), "train_part": a.train_part, "texts": len(train)}, indent=1))
            tuned_valid, _ = greedy_wer(str(folder), va_waves, valid, v)
            tuned_lab = greedy_wer(str(folder), lab_waves, labelled["query"].tolist(), v)[0] if len(labelled) else None
            promote = bool(tuned_valid < base_valid - a.min_gain
                           and (base_lab is None or tuned_lab <= base_lab + a.max_labelled_regression))
            metrics = {"base_valid_wer": base_valid, "tuned_valid_wer": tuned_valid, "train_seconds": train_s,
                       "synth_seconds": synth_s}
            if base_lab is not None:
                metrics |= {"base_labelled_wer": base_lab, "tuned_labelled_wer": tuned_lab}
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(folder), ARTIFACT)
        tags = {FINGERPRINT_TAG: fingerprint, "run_date": str(ctx.run_date), "base_model": base_version,
                "config_fingerprint": config_fp,
                **{k: f"{x:.4f}" for k, x in metrics.items() if "wer" in k}}
        version = _register(cfg, mrun.info.run_id, tags, promote)
    rows = [["base", round(base_valid, 4), round(base_lab, 4) if base_lab is not None else "n/a"],
            [f"adapted v{version}{' (promoted)' if promote else ''}", round(tuned_valid, 4),
             round(tuned_lab, 4) if tuned_lab is not None else "n/a"]]
    print_table(f"tune-asr: greedy WER, {len(valid)} synthetic validation clips / {len(labelled)} labelled clips",
                ["recogniser", "synthetic valid", "labelled"], rows)
    if not promote:
        log.info("tune-asr: v%s not promoted (synthetic WER %.4f vs base %.4f - min_gain %.4f; labelled %s vs %s); "
                 "transcribe keeps its recogniser", version, tuned_valid, base_valid, a.min_gain, tuned_lab, base_lab)
    return {"registered_model": name, "version": version, "promoted": promote, "trained": True,
            "run_id": mrun.info.run_id, "input_fingerprint": fingerprint, "base_valid_wer": round(base_valid, 4),
            "tuned_valid_wer": round(tuned_valid, 4),
            "base_labelled_wer": None if base_lab is None else round(base_lab, 4),
            "tuned_labelled_wer": None if tuned_lab is None else round(tuned_lab, 4),
            "n_train": len(train), "n_valid": len(valid), "n_labelled": len(labelled), "epochs": history,
            "voices": tr_meta["voice"].value_counts().to_dict(), "train_seconds": round(train_s, 1),
            "synth_seconds": round(synth_s, 1), "device": device}
