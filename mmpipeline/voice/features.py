"""Per-clip acoustic features with torchaudio: an MFCC summary (mean and standard deviation of each
coefficient over the clip's frames), kept in ``gold.voice_features`` for analysis and for the
ranker, plus a few scalar descriptors (duration, loudness after normalisation, speech share)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mmpipeline.voice.audio import TARGET_SR

N_MFCC = 20
FEATURE_VERSION = f"mfcc{N_MFCC}-mean-std-v1"


@lru_cache(maxsize=2)
def _mfcc(n_mfcc: int = N_MFCC):
    import torchaudio.transforms as AT

    return AT.MFCC(sample_rate=TARGET_SR, n_mfcc=n_mfcc,
                   melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 64, "center": True})


def mfcc_summary(wave16k: np.ndarray, n_mfcc: int = N_MFCC) -> np.ndarray:
    """[mean(n_mfcc), std(n_mfcc)] of the MFCCs of a 16 kHz mono clip (float32, 2*n_mfcc values)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wave16k, dtype=np.float32)).unsqueeze(0)
    with torch.no_grad():
        m = _mfcc(n_mfcc)(x)[0]  # (n_mfcc, frames)
    return torch.cat([m.mean(dim=1), m.std(dim=1, unbiased=False)]).numpy().astype(np.float32)
