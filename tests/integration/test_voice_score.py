"""Recognised voice queries go through the score stage and publish with modality ``voice`` (tiny
catalog and pyfunc ranker from test_score_pipeline; real Delta, MLflow, Great Expectations)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mmpipeline.context import RunContext

D = dt.date(2026, 11, 1)


@pytest.mark.slow
def test_voice_queries_published_with_modality(make_config, tmp_path, capsys):
    from test_score_pipeline import _full, build_lake, register_models, set_alias

    from mmpipeline.score import job, publish

    cfg = make_config({"score.head_queries": 20, "score.candidates_k": 15, "score.output_k": 10,
                       "score.min_results_per_query": 5, "score.batch_size": 100,
                       "rank.text_model_name": "tiny-text", "rank.image_model_name": "tiny-image",
                       "mlflow.model_name": "test-ranker"})
    lake = RunContext.create(cfg, D).lake
    build_lake(lake)
    set_alias(cfg, register_models(cfg)["good"])
    # three clips: two recognised (one of them says what a typed head query says), one without speech,
    # and a transcript of a clip that is no longer in silver.voice_queries
    lake.write("silver.voice_queries", _full("silver.voice_queries", pd.DataFrame({
        "query_id": ["vA", "vB", "vC"], "audio_ref": ["a.wav", "b.wav", "c.wav"], "run_date": [D] * 3})),
        mode="overwrite")
    now = pd.Timestamp("2026-11-01", tz="UTC")
    lake.write("gold.voice_transcripts", _full("gold.voice_transcripts", pd.DataFrame({
        "query_id": ["vA", "vB", "vC", "vGone"], "query_text": ["red shirt", "blue bag", "", "green shoe"],
        "usable": [True, True, False, True], "run_date": [D] * 4, "transcribed_at": [now] * 4})), mode="overwrite")
    # the tiny 8-d test space has no text encoder, so the voice queries' vectors are stored (a real run
    # encodes them on the fly with the embed stage's text model)
    qe = lake.read_pandas("gold.query_embeddings")
    by_text = dict(zip(lake.read_pandas("silver.queries")["query_norm"], lake.read_pandas("silver.queries")["query_id"]))
    extra = []
    for vid, text in (("vA", "red shirt"), ("vB", "blue bag")):
        row = qe[qe["query_id"] == by_text[text]].iloc[0].copy()
        row["query_id"] = vid
        extra.append(row)
    lake.write("gold.query_embeddings", pd.concat([qe, pd.DataFrame(extra)], ignore_index=True), mode="overwrite")

    s = job.run(RunContext.create(cfg, D))
    r = lake.read_pandas("gold.search_ranking")
    voice = r[r["modality"] == "voice"]
    assert set(voice["query_id"]) == {"vA", "vB"}  # no-speech clip and vanished clip not searched
    assert set(r.loc[r["modality"] == "text", "query_id"]).isdisjoint({"vA", "vB", "vC", "vGone"})
    assert s["queries"] == 20 + 2  # every typed query (20) + the two usable voice queries
    assert voice.loc[voice["query_id"] == "vA", "query"].iloc[0] == "red shirt"
    # the voice query "blue bag" gets the same ranking as the typed query "blue bag"
    typed = r[r["query_id"] == by_text["blue bag"]].sort_values("rank")
    said = voice[voice["query_id"] == "vB"].sort_values("rank")
    assert len(typed) == 10 and list(said["product_id"]) == list(typed["product_id"])
    assert publish.run(RunContext.create(cfg, D))["published"]
    served = lake.read_pandas("gold.search_index")
    assert set(served.loc[served["modality"] == "voice", "query_id"]) == {"vA", "vB"}

    # `mmpipeline search --audio`: a real clip Whisper tiny.en hears as "fabric pendant."; the shop's log
    # has "chadwick pendant", which the audio supports about as well, so that is what is searched
    import os
    from pathlib import Path

    from mmpipeline.voice.search import search_audio

    shared = Path(os.environ.get("MMP_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
    clip = shared / "voice" / "audio" / "v21d8224c57.wav"
    if not clip.is_file():
        return  # the shared sample datasets are not beside the checkout: the audio part needs a real clip

    sq = lake.read_pandas("silver.queries")
    lake.write("silver.queries", pd.concat([sq, sq.head(1).assign(query="chadwick pendant", query_norm="chadwick pendant",
                                                                  query_id="qchadwick")], ignore_index=True),
               mode="overwrite")
    capsys.readouterr()
    out = search_audio(cfg, str(clip))
    heard = capsys.readouterr().out
    assert out["recognised"]["query_text"] == "chadwick pendant" and out["query"] == "chadwick pendant"
    assert "chadwick" not in out["recognised"]["whisper_text"].lower()
    assert "heard: 'fabric pendant.' -> the logged query 'chadwick pendant'" in heard, heard
    assert out["results"] == []  # not a published query of this tiny index: said so, nothing invented
