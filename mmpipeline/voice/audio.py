"""Audio I/O, per-clip checks and preprocessing.

Decoder: ``soundfile`` (libsndfile: WAV, FLAC, OGG...). torchaudio 2.9+ routes ``torchaudio.load``
to TorchCodec, which is not installed here (and pulls FFmpeg); libsndfile is pinned in the lock and
decodes every container of the voice sample. Everything after decoding is torchaudio:
``torchaudio.functional.resample`` (to 16 kHz), ``torchaudio.functional.loudness`` (ITU-R BS.1770)
for loudness normalisation, and MFCC / log-mel in :mod:`mmpipeline.voice.features`.

:func:`check_clip` never raises: it returns a status (``ok`` or a reason code) and a readable
detail. Reasons: ``no_audio_ref``, ``outside_root``, ``missing``, ``unreadable``, ``empty_file``,
``too_large``, ``not_audio``, ``truncated``, ``decode_failed``, ``unknown_format``, ``too_short``,
``too_long``, ``silent``.
"""

from __future__ import annotations

import hashlib
import io
import os
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

TARGET_SR = 16_000
DECODER = "soundfile"  # libsndfile; see the module doc


@dataclass(frozen=True)
class Clip:
    """A decoded clip: float32 samples in [-1, 1], shape (frames, channels)."""

    samples: np.ndarray
    sample_rate: int
    fmt: str

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / float(self.sample_rate) if self.sample_rate else 0.0


def decode_bytes(data: bytes) -> Clip:
    """Decode a whole file's bytes with libsndfile (raises on failure)."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        x = f.read(dtype="float32", always_2d=True)
        return Clip(x, int(f.samplerate), str(f.format))


def decode_file(path: str) -> Clip:
    with open(path, "rb") as f:
        return decode_bytes(f.read())


def _declared_wav_frames(data: bytes) -> int | None:
    """Frames the WAV header declares (its data chunk size), or None when not a PCM WAV."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data)) as w:
            return int(w.getnframes())
    except (wave.Error, EOFError, ValueError):
        return None


def _result(status: str, detail: str | None = None, path: str | None = None, **kw: Any) -> dict[str, Any]:
    out = {"audio_path": path, "audio_status": status, "audio_detail": detail, "audio_hash": None,
           "sample_rate": None, "channels": None, "duration_s": None, "audio_format": None}
    out.update(kw)
    return out


def resolve_under(root: str, ref: str) -> tuple[str, bool]:
    """(real path, inside root): ``ref`` relative to ``root`` (or absolute), symlinks resolved."""
    root_real = os.path.realpath(root)
    path = ref if os.path.isabs(ref) else os.path.join(root_real, ref)
    real = os.path.realpath(path)
    try:
        inside = os.path.commonpath([real, root_real]) == root_real
    except ValueError:
        inside = False
    return real, inside


def check_clip(root: str, ref: str | None, *, max_bytes: int, min_duration_s: float, max_duration_s: float,
               silence_dbfs: float) -> dict[str, Any]:
    """Check one audio reference (see the module doc for the statuses); never raises."""
    if ref is None or not str(ref).strip():
        return _result("no_audio_ref", "the row names no audio file")
    ref = str(ref).strip()
    real, inside = resolve_under(root, ref)
    if not inside:
        return _result("outside_root", f"{ref!r} resolves to {real}, outside the audio root {os.path.realpath(root)}")
    if not os.path.isfile(real):
        return _result("missing", f"no file at {real}", real)
    try:
        size = os.path.getsize(real)
        if size == 0:
            return _result("empty_file", "0-byte file", real)
        if size > max_bytes:
            return _result("too_large", f"{size} bytes > limit {max_bytes} (voice.max_bytes)", real)
        with open(real, "rb") as f:
            data = f.read()
    except OSError as e:
        return _result("unreadable", f"{type(e).__name__}: {e}", real)
    digest = hashlib.sha256(data).hexdigest()
    try:
        clip = decode_bytes(data)
    except Exception as e:  # noqa: BLE001 - libsndfile's errors: not an audio container it knows
        msg = str(e).split(":")[-1].strip() or type(e).__name__
        return _result("not_audio", f"libsndfile cannot open it ({msg}); expected WAV/FLAC/OGG audio", real,
                       audio_hash=digest)
    sr, frames, ch = clip.sample_rate, clip.samples.shape[0], clip.samples.shape[1]
    meta = {"audio_hash": digest, "sample_rate": sr or None, "channels": ch or None, "audio_format": clip.fmt}
    if not sr or sr <= 0 or not ch:
        return _result("unknown_format", f"sample rate {sr} / channels {ch} unknown", real, **meta)
    declared = _declared_wav_frames(data)
    if declared is not None and frames < declared:
        return _result("truncated", f"header declares {declared} frames ({declared / sr:.2f}s), file holds "
                                    f"{frames} ({frames / sr:.3f}s): the file was cut off", real, **meta,
                       duration_s=frames / sr)
    dur = frames / sr
    meta["duration_s"] = dur
    if dur < min_duration_s:
        return _result("too_short", f"{dur:.3f}s < voice.min_duration_s={min_duration_s}", real, **meta)
    if dur > max_duration_s:
        return _result("too_long", f"{dur:.1f}s > voice.max_duration_s={max_duration_s} (not a spoken query)",
                       real, **meta)
    x = clip.samples.astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    level = 20 * np.log10(rms) if rms > 0 else float("-inf")
    if not np.isfinite(x).all():
        return _result("decode_failed", "decoded samples contain NaN/inf", real, **meta)
    if level < silence_dbfs:
        return _result("silent", f"RMS level {level:.1f} dBFS < voice.silence_dbfs={silence_dbfs}: no speech", real,
                       **meta)
    return _result("ok", None, real, **meta)


# ------------------------------------------------------------------------------ preprocessing


def preprocess(clip: Clip, *, target_lufs: float = -23.0, trim_db: float = 40.0, pad_s: float = 0.15,
               stretch: float = 1.0):
    """Down-mix, resample to 16 kHz, trim leading/trailing silence, optionally time-stretch
    (``stretch`` < 1 slows speech down at the same pitch: torchaudio's phase vocoder) and
    loudness-normalise (BS.1770).

    Returns a float32 numpy array (mono, 16 kHz, peak <= 1).
    """
    import torch
    import torchaudio.functional as AF

    x = torch.from_numpy(np.ascontiguousarray(clip.samples.T, dtype=np.float32))  # (channels, frames)
    x = x.mean(dim=0, keepdim=True)  # down-mix
    if clip.sample_rate != TARGET_SR:
        x = AF.resample(x, clip.sample_rate, TARGET_SR)
    x = trim_silence(x, TARGET_SR, trim_db, pad_s)
    if stretch and abs(stretch - 1.0) > 1e-6:
        x = time_stretch(x, stretch)
    if x.shape[-1] >= int(0.4 * TARGET_SR):  # BS.1770 gates over 400 ms blocks
        lufs = float(AF.loudness(x, TARGET_SR))
        if np.isfinite(lufs):
            x = x * (10.0 ** ((target_lufs - lufs) / 20.0))
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak > 1.0:
        x = x / peak
    return x[0].numpy().astype(np.float32)


def trim_silence(x, sr: int, trim_db: float = 40.0, pad_s: float = 0.15):
    """Cut leading and trailing 20 ms frames more than ``trim_db`` below the loudest frame."""
    import torch

    hop = max(1, int(0.02 * sr))
    n = x.shape[-1] // hop
    if n < 3:
        return x
    frames = x[..., : n * hop].reshape(x.shape[0], n, hop)
    energy = 10 * torch.log10(frames.pow(2).mean(dim=(0, 2)) + 1e-12)
    keep = torch.nonzero(energy > energy.max() - trim_db).flatten()
    if not len(keep):
        return x
    pad = int(pad_s * sr)
    start = max(0, int(keep[0]) * hop - pad)
    end = min(x.shape[-1], (int(keep[-1]) + 1) * hop + pad)
    return x[..., start:end]


def time_stretch(x, rate: float, n_fft: int = 512, hop: int = 128):
    """Play ``x`` (channels, frames) at ``rate`` x speed with unchanged pitch (phase vocoder)."""
    import torch
    import torchaudio.functional as AF

    win = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=win, return_complex=True)
    adv = torch.linspace(0, np.pi * hop, n_fft // 2 + 1)[..., None]
    out = torch.istft(AF.phase_vocoder(spec, rate, adv), n_fft, hop, window=win)
    return out.to(torch.float32)
