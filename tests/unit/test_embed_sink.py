"""The embed sink: new vectors and deletions of one (table, modality, model) in one Delta merge commit
(delta-rs on a tmp lake; no Spark, no model)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable

from mmpipeline.embed import sink
from mmpipeline.embed.encoders import EncoderSpec
from mmpipeline.embed.job import vectors_table
from mmpipeline.lake import Lake

T = "gold.product_embeddings"


def _vecs(spec, ids, hashes, value, day=1):
    return vectors_table("product_id", ids, spec, "text", hashes, np.full((len(ids), 4), value, np.float32),
                         dt.date(2026, 1, day))


def test_upserts_and_deletions_land_in_one_commit_and_touch_nothing_else(tmp_path):
    lake = Lake(tmp_path, engine="delta-rs")
    m1 = EncoderSpec(kind="x", name="m1", source="s", version="1", modality="text")
    m2 = EncoderSpec(kind="x", name="m2", source="s", version="1", modality="text")
    # the first commit creates the table from the upserts only (a deletion row is never inserted)
    sink.commit(lake, T, pa.concat_tables([sink.conform(T, _vecs(m1, ["a", "b", "c"], ["ha", "hb", "hc"], 1.0)),
                                           sink.deletion_rows(T, "product_id", ["zz"], "text", "m1")]))
    sink.commit(lake, T, _vecs(m2, ["a", "b"], ["ha", "hb"], 2.0))  # another model's vectors, own file
    other_files = set(DeltaTable(lake.uri(T)).file_uris()) - set(DeltaTable(lake.uri(T), version=0).file_uris())
    v = lake.version(T)

    src = pa.concat_tables([sink.conform(T, _vecs(m1, ["b", "d"], ["hb2", "hd"], 3.0, day=2)),
                            sink.deletion_rows(T, "product_id", ["a", "never-stored"], "text", "m1")])
    sink.commit(lake, T, src, {"stage": "embed", "run_date": "2026-01-02"})

    assert lake.version(T) == v + 1  # one commit for the new, changed and deleted vectors
    assert lake.history(T, 1)[0]["metadata"] == {"stage": "embed", "run_date": "2026-01-02"}
    df = lake.read_pandas(T).sort_values(["model_name", "product_id"])
    got = {(r.model_name, r.product_id): (r.content_hash, float(r.vector[0])) for r in df.itertuples()}
    assert got == {("m1", "b"): ("hb2", 3.0), ("m1", "c"): ("hc", 1.0), ("m1", "d"): ("hd", 3.0),
                   ("m2", "a"): ("ha", 2.0), ("m2", "b"): ("hb", 2.0)}
    assert other_files <= set(DeltaTable(lake.uri(T)).file_uris())  # the other model's file was not rewritten


def test_deletions_only(tmp_path):
    lake = Lake(tmp_path, engine="delta-rs")
    m1 = EncoderSpec(kind="x", name="m1", source="s", version="1", modality="text")
    sink.commit(lake, T, _vecs(m1, ["a", "b"], ["ha", "hb"], 1.0))
    sink.commit(lake, T, sink.deletion_rows(T, "product_id", ["a"], "text", "m1"))
    assert lake.read_pandas(T)["product_id"].tolist() == ["b"]
