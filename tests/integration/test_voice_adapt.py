"""``tune-asr`` on real Spark, Delta, MLflow and Whisper tiny.en, on a handful of clips: it speaks
train-split queries with espeak-ng (never a voice clip's own transcript), fine-tunes, writes a
CTranslate2 model faster-whisper loads, registers and promotes it; a re-run of the date trains nothing
and registers nothing; ``transcribe`` then recognises every clip again, once, with the promoted model."""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmpipeline.context import RunContext

D = dt.date(2026, 3, 1)


def _data(shared: Path, out: Path) -> tuple[Path, Path, pd.DataFrame]:
    m = pd.read_csv(shared / "voice" / "voice_queries.csv")
    good = m[(m["voice"] == "piper") & m["noise_snr_db"].isna()].sort_values("voice_query_id").head(2)
    (out / "audio").mkdir(parents=True)
    for r in good.itertuples():
        shutil.copy(shared / "voice" / r.audio_path, out / r.audio_path)
    clips = out / "voice_queries.csv"
    good[["voice_query_id", "audio_path", "transcript"]].to_csv(clips, index=False)
    spoken = set(m["transcript"].str.lower().str.strip())
    hd = pd.read_csv(shared / "homedepot" / "relevance.csv", encoding="latin-1", usecols=["search_term"])
    other = [q for q in sorted(hd["search_term"].unique()) if q.lower().strip() not in spoken][:120]
    queries = out / "queries.csv"
    with open(queries, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query"])
        w.writerows([[q] for q in other + good["transcript"].tolist()])
    return clips, queries, good


def test_tune_asr_adapts_registers_once_and_transcribe_uses_it(spark, make_config, tmp_path, shared_datasets):
    pytest.importorskip("espeakng_loader")
    from mmpipeline.clean.stage import run as clean_run
    from mmpipeline.ingest import run as ingest_run
    from mmpipeline.tracking import client
    from mmpipeline.voice import adapt
    from mmpipeline.voice.stage import run as transcribe_run
    from mmpipeline.voice.vocab import norm

    clips, queries, good = _data(shared_datasets, tmp_path / "data")
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "sources": {
        "queries": {"path": str(queries), "format": "csv", "options": {"header": True}, "columns": {"query": "query"}},
        "voice_queries": {"path": str(clips), "format": "csv", "options": {"header": True},
                          "audio_root": str(clips.parent),
                          "columns": {"query_id": "voice_query_id", "audio_ref": "audio_path", "query": "transcript"}}},
        "voice": {"batch_size": 4, "beam_size": 1, "nbest": 1,
                  # a tiny adaptation; min_gain -1 promotes whatever comes out, so transcribe's switch is tested
                  "adapt": {"enabled": True, "max_texts": 8, "valid_texts": 3, "max_labelled_clips": 2,
                            "batch_size": 4, "epochs": 1.0, "min_gain": -1.0, "max_labelled_regression": 1.0}}}))
    cfg = make_config({}, path=p)
    ctx = RunContext.create(cfg, D)
    ingest_run(ctx)
    clean_run(ctx)
    lake = ctx.lake

    # texts: train split only, never a clip's transcript, deterministic
    silver_q = lake.read_pandas("silver.queries")
    spoken = set(good["transcript"].map(norm))
    assert spoken <= set(silver_q["query_norm"])  # the log has them ...
    train, valid = adapt.pick_texts(silver_q, spoken, cfg)
    assert len(train) == 8 and len(valid) == 3 and not (set(map(norm, train + valid)) & spoken)  # ... never spoken
    assert not set(train) & set(valid)
    assert (train, valid) == adapt.pick_texts(silver_q.sample(frac=1.0, random_state=1), spoken, cfg)

    before = transcribe_run(RunContext.create(cfg, D))  # nothing promoted yet: the packaged tiny.en
    assert before["transcribed"] == 2

    s1 = adapt.run(RunContext.create(cfg, D))
    assert s1["trained"] and s1["promoted"] and s1["n_train"] == 8 and s1["n_labelled"] == 2
    assert 0 <= s1["tuned_valid_wer"] and s1["epochs"][0]["loss"] > 0
    versions = client(cfg).search_model_versions(f"name = '{adapt.registered_name(cfg)}'")
    assert [str(v.version) for v in versions] == [s1["version"]]
    models = adapt.recognizer_models(cfg)
    assert len(models) == 2 and models[1] is None  # decode: both -- the adapted model, then the base (voice.model)
    folder = Path(models[0])
    assert (folder / "model.bin").is_file() and (folder / adapt.ADAPTATION_FILE).is_file()
    assert (folder / "model.bin").stat().st_size > 10_000_000

    s2 = adapt.run(RunContext.create(cfg, D))  # a re-run: same inputs, same version, nothing trained
    assert not s2["trained"] and s2["version"] == s1["version"]
    assert len(client(cfg).search_model_versions(f"name = '{adapt.registered_name(cfg)}'")) == 1

    after = transcribe_run(RunContext.create(cfg, dt.date(2026, 3, 2)))
    assert after["transcribed"] == 2 and after["asr_version"] != before["asr_version"]
    tr = lake.read_pandas("gold.voice_transcripts")
    assert tr["asr_model"].str.startswith(f"{folder} + ").all()  # the adapted model beside the base one
    assert "+" in after["asr_version"].split("/")[0]
    again = transcribe_run(RunContext.create(cfg, dt.date(2026, 3, 3)))
    assert again["transcribed"] == 0
