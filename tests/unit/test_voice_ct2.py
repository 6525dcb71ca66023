"""The CTranslate2 <-> PyTorch Whisper bridge the recogniser's fine-tuning stands on: the packaged
tiny.en's weights go to PyTorch and back byte for byte, and the PyTorch model computes what
faster-whisper computes (its greedy transcript of a real clip is the argmax path of the PyTorch model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ct2 = pytest.importorskip("mmpipeline.voice.ct2")


@pytest.fixture(scope="module")
def packaged() -> Path:
    from mmpipeline.voice.asr import default_model_path

    try:
        return Path(default_model_path())
    except RuntimeError as e:  # pragma: no cover - the lock installs it
        pytest.skip(str(e))


def test_weights_round_trip_byte_for_byte(packaged, tmp_path):
    like = ct2.read(packaged / "model.bin")
    model = ct2.to_torch(like)
    ct2.save_like(model, like, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == (packaged / "model.bin").read_bytes()


def test_a_changed_weight_is_written_where_faster_whisper_reads_it(packaged, tmp_path):
    import torch

    like = ct2.read(packaged / "model.bin")
    model = ct2.to_torch(like)
    with torch.no_grad():
        model.model.encoder.layers[1].self_attn.k_proj.weight.add_(1.0)
        model.model.decoder.layers[2].encoder_attn.v_proj.bias.add_(2.0)
    ct2.save_like(model, like, tmp_path / "model.bin")
    out = ct2.read(tmp_path / "model.bin")
    d = 384
    qkv_old = like.get("encoder/layer_1/self_attention/linear_0/weight").astype(np.float32)
    qkv_new = out.get("encoder/layer_1/self_attention/linear_0/weight").astype(np.float32)
    assert np.allclose(qkv_new[d:2 * d] - qkv_old[d:2 * d], 1.0, atol=1e-2)  # the key rows only
    assert np.array_equal(qkv_new[:d], qkv_old[:d]) and np.array_equal(qkv_new[2 * d:], qkv_old[2 * d:])
    kv_b = out.get("decoder/layer_2/attention/linear_1/bias").astype(np.float32)
    old_b = like.get("decoder/layer_2/attention/linear_1/bias").astype(np.float32)
    assert np.allclose(kv_b[d:] - old_b[d:], 2.0, atol=1e-2) and np.array_equal(kv_b[:d], old_b[:d])


def test_pytorch_model_follows_faster_whispers_greedy_path(packaged, shared_datasets):
    import csv

    import torch
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    from mmpipeline.voice.audio import decode_file, preprocess

    rows = [r for r in csv.DictReader(open(shared_datasets / "voice" / "voice_queries.csv"))
            if r["voice"] == "piper" and not r["noise_snr_db"]][:1]
    wave = preprocess(decode_file(str(shared_datasets / "voice" / rows[0]["audio_path"])))
    fw = WhisperModel(str(packaged), device="cpu", compute_type="float32")
    feats = pad_or_trim(fw.feature_extractor(wave)[..., :-1]).astype(np.float32)
    prompt = [ct2.SOT, ct2.NO_TIMESTAMPS]
    res = fw.model.generate(fw.encode(feats[None]), [prompt], beam_size=1, max_length=40, suppress_blank=False,
                            suppress_tokens=[])
    tokens = res[0].sequences_ids[0]
    assert len(tokens) >= 2, "faster-whisper recognised nothing"
    model = ct2.to_torch(ct2.read(packaged / "model.bin")).eval()
    seq = prompt + tokens
    with torch.no_grad():
        logits = model(input_features=torch.from_numpy(feats[None]),
                       decoder_input_ids=torch.tensor([seq])).logits[0]
    pred = logits.argmax(-1).tolist()[len(prompt) - 1:len(seq) - 1]
    assert pred == tokens
