"""Voice end to end on real Spark, Delta and Whisper tiny.en (faster-whisper, CPU int8): every bad
clip is quarantined with its own reason while the run goes on (and validate passes on the rest); real
recognition of two clips; a
re-run of the transcribe stage recognises nothing new and leaves the gold tables unchanged."""

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
BAD_REASONS = {"empty.wav": "empty_file", "truncated.wav": "truncated", "not_audio.flac": "not_audio",
               "silence.wav": "silent", "three_minutes_noise.wav": "too_long"}


def _good_clips(shared: Path, n: int = 2) -> pd.DataFrame:
    m = pd.read_csv(shared / "voice" / "voice_queries.csv")
    easy = m[(m["voice"] == "piper") & m["noise_snr_db"].isna() & (m["speed"] == 1.0)]
    easy = easy[easy["transcript"].isin(["martha stewart cabinet", "kitchen cabinet handle pulls in black",
                                         "cotton gloves", "arlington house"])]
    return easy.sort_values("voice_query_id").head(n)


def _write_voice_data(shared: Path, out: Path) -> tuple[Path, pd.DataFrame]:
    (out / "audio").mkdir(parents=True)
    (out / "bad").mkdir()
    good = _good_clips(shared)
    rows = []
    for r in good.itertuples():
        shutil.copy(shared / "voice" / r.audio_path, out / r.audio_path)
        rows.append([r.voice_query_id, r.audio_path, r.transcript])
    for name in BAD_REASONS:
        shutil.copy(shared / "voice" / "bad" / name, out / "bad" / name)
        rows.append([f"bad-{name}", f"bad/{name}", ""])
    rows.append(["escape", "../../etc/passwd", ""])
    rows.append(["gone", "audio/not_there.wav", ""])
    manifest = out / "voice_queries.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["voice_query_id", "audio_path", "transcript"])
        w.writerows(rows)
    return manifest, good


def _cfg(make_config, tmp_path: Path, manifest: Path):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "sources": {"voice_queries": {
        "path": str(manifest), "format": "csv", "audio_root": str(manifest.parent),
        "columns": {"query_id": "voice_query_id", "audio_ref": "audio_path", "query": "transcript"}}},
        "voice": {"batch_size": 2},
        # most clips here are bad on purpose: the misread-export stop (clean.max_quarantine_share) is off
        "clean": {"max_quarantine_share": 1.0}}))
    return make_config({}, path=p)


def test_voice_clean_quarantines_bad_clips_and_transcribe_is_incremental(spark, make_config, tmp_path,
                                                                         shared_datasets):
    from mmpipeline.clean.stage import run as clean_run
    from mmpipeline.ingest import run as ingest_run
    from mmpipeline.voice.stage import run as transcribe_run
    from mmpipeline.voice.vocab import norm

    manifest, good = _write_voice_data(shared_datasets, tmp_path / "voice")
    cfg = _cfg(make_config, tmp_path, manifest)
    ctx = RunContext.create(cfg, D)
    ingest_run(ctx)
    clean_run(ctx)
    lake = ctx.lake
    q = lake.read_pandas("quarantine.voice_queries").set_index("record_key")
    for name, reason in BAD_REASONS.items():
        assert q.loc[f"bad/{name}", "reason"] == reason, q.loc[f"bad/{name}"].to_dict()
        assert q.loc[f"bad/{name}", "detail"]
    assert q.loc["../../etc/passwd", "reason"] == "outside_root"
    assert q.loc["audio/not_there.wav", "reason"] == "missing"
    silver = lake.read_pandas("silver.voice_queries").set_index("query_id")
    assert sorted(silver.index) == sorted(good["voice_query_id"])
    assert silver["audio_hash"].str.len().eq(64).all() and (silver["sample_rate"] > 0).all()
    acc = lake.read_pandas("ops.row_accounting").set_index("table_name").loc["silver.voice_queries"]
    assert (acc["rows_in"], acc["rows_kept"], acc["rows_quarantined"]) == (len(good) + 7, len(good), 7)
    # the Great Expectations suite of silver.voice_queries passes (no transcript needed for voice rows)
    from mmpipeline.validate import run as validate_run

    validate_run(ctx)
    val = lake.read_pandas("ops.validation")
    val = val[(val["table_name"] == "silver.voice_queries") & (val["severity"] == "critical")]
    assert {"audio_hash_not_null", "duration_range"} <= set(val["check_name"]) and val["success"].all()

    s1 = transcribe_run(RunContext.create(cfg, D))
    assert s1["transcribed"] == len(good)
    tr = lake.read_pandas("gold.voice_transcripts").set_index("query_id")
    for r in good.itertuples():
        assert tr.loc[r.voice_query_id, "text_norm"] == norm(r.transcript), tr.loc[r.voice_query_id].to_dict()
        assert tr.loc[r.voice_query_id, "usable"]
    feats = lake.read_pandas("gold.voice_features")
    assert len(feats) == len(good) and (feats["dim"] == 40).all()
    v_t, v_f = lake.version("gold.voice_transcripts"), lake.version("gold.voice_features")
    before = tr.sort_index()

    s2 = transcribe_run(RunContext.create(cfg, dt.date(2026, 3, 2)))
    assert s2["transcribed"] == 0 and s2["features_computed"] == 0
    after = lake.read_pandas("gold.voice_transcripts").set_index("query_id").sort_index()
    pd.testing.assert_frame_equal(before, after)
    assert lake.read_pandas("gold.voice_features").shape == feats.shape
    hist = [h.get("operationMetrics", {}) for h in lake.history("gold.voice_transcripts", limit=1)]
    assert all(int(m.get("num_target_rows_updated", 0) or 0) == 0 for m in hist)
