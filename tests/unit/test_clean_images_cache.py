"""Image checks keep the previous verdict of unchanged files and re-check new or changed ones."""

from __future__ import annotations

import os

import pandas as pd
from PIL import Image

from mmpipeline.config import ImageLimits


def _img(path, colour=(1, 2, 3), size=(30, 30)):
    Image.new("RGB", size, colour).save(path, "JPEG")


def test_unchanged_files_are_not_opened(tmp_path, monkeypatch):
    from mmpipeline.clean import images

    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    calls = []
    real = images.check_image
    monkeypatch.setattr(images, "check_image", lambda root, ref, *a: calls.append(ref) or real(root, ref, *a))
    refs = pd.DataFrame({"image_ref": ["a.jpg", "b.jpg", "gone.jpg"]})
    first = images.check_refs_pandas(refs, str(tmp_path), ImageLimits())
    assert sorted(calls) == ["a.jpg", "b.jpg", "gone.jpg"] and not first["image_reused"].any()
    prev = first.drop(columns=["image_reused"]).rename(columns={c: f"_prev_{c}" for c in first.columns if c != "image_ref"})
    calls.clear()
    st = os.stat(tmp_path / "b.jpg")
    _img(tmp_path / "b.jpg", colour=(200, 0, 0), size=(40, 40))  # changed content
    os.utime(tmp_path / "b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = images.check_refs_pandas(refs.merge(prev, on="image_ref"), str(tmp_path), ImageLimits())
    assert sorted(calls) == ["b.jpg", "gone.jpg"]  # a.jpg kept its verdict without being opened
    got = second.set_index("image_ref")
    assert got.loc["a.jpg", "image_reused"] and got.loc["a.jpg", "image_status"] == "ok"
    assert got.loc["a.jpg", "image_hash"] == first.set_index("image_ref").loc["a.jpg", "image_hash"]
    assert not got.loc["b.jpg", "image_reused"] and got.loc["b.jpg", "image_width"] == 40


def test_check_images_with_previous_record_in_spark(spark, tmp_path):
    from mmpipeline.clean.images import check_images, image_record

    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg")
    df = spark.createDataFrame([("1", "a.jpg"), ("2", "b.jpg"), ("3", "a.jpg"), ("4", "../x.jpg")],
                               "product_id string, image_ref string")
    first = check_images(df, str(tmp_path), ImageLimits(), 2).cache()
    assert first.count() == 4
    assert {r["product_id"]: r["image_status"] for r in first.collect()} == {
        "1": "ok", "2": "ok", "3": "ok", "4": "outside_root"}
    record = spark.createDataFrame(image_record(first).toPandas())  # as stored in ops.image_checks
    assert record.count() == 3  # one row per distinct reference
    # b.jpg becomes a truncated file (new size and mtime): re-checked; a.jpg: verdict reused
    data = (tmp_path / "b.jpg").read_bytes()
    (tmp_path / "b.jpg").write_bytes(data[: len(data) // 2])
    second = {r["product_id"]: (r["image_status"], r["image_reused"])
              for r in check_images(df, str(tmp_path), ImageLimits(), 2, previous=record).collect()}
    assert second == {"1": ("ok", True), "2": ("corrupt", False), "3": ("ok", True), "4": ("outside_root", False)}
