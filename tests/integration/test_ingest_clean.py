"""ingest -> clean end to end on real Spark + real Delta: the generated sample, bad inputs of every
kind (each ends in quarantine with a reason, nothing lost), a new retailer's export loaded through a
config alone, and re-runs of a run date leaving every table unchanged."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from mmpipeline.context import RunContext

D = dt.date(2026, 3, 1)
TABLES = ["bronze.products", "bronze.queries", "bronze.judgments", "bronze.interactions", "silver.products",
          "silver.queries", "silver.judgments", "silver.interactions", "quarantine.products",
          "quarantine.judgments", "quarantine.interactions", "quarantine.queries", "quarantine.images"]


def _cfg(make_config, tmp_path: Path, sources: dict, **extra):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "sources": sources, **extra}))
    return make_config({}, path=p)


def _run(cfg, stage: str, run_date=D):
    from mmpipeline.clean.stage import run as clean_run
    from mmpipeline.ingest import run as ingest_run

    ctx = RunContext.create(cfg, run_date)
    return (ingest_run if stage == "ingest" else clean_run)(ctx), ctx


def _snapshot(lake) -> dict[str, pd.DataFrame]:
    out = {}
    for t in TABLES:
        if lake.exists(t):
            df = lake.read_pandas(t)
            df = df.astype({c: str for c in df.columns})
            out[t] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def _accounting(lake, stage: str = "clean") -> pd.DataFrame:
    a = lake.read_pandas("ops.row_accounting")
    return a[a["stage"] == stage].set_index("table_name")


def _sample_sources(d: Path) -> dict:
    return yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "sample.yaml").read_text().replace(
        "${MMP_SAMPLE_DATA:-../var/sample-data}", str(d)))["sources"]


def test_sample_ingest_clean_and_rerun_is_idempotent(spark, make_config, tmp_path):
    from mmpipeline.sources.sample import write_sample_data

    info = write_sample_data(tmp_path / "data", n_products=60, seed=1)
    cfg = _cfg(make_config, tmp_path, _sample_sources(tmp_path / "data"))
    _run(cfg, "ingest")
    summary, ctx = _run(cfg, "clean")
    lake = ctx.lake
    acc = _accounting(lake)
    # "in" is counted independently: records in the file (ingest), bronze rows (clean)
    ing = _accounting(lake, "ingest")
    assert ing.loc["bronze.products", "rows_in"] == info["products"] == ing.loc["bronze.products", "rows_kept"]
    assert acc.loc["silver.products", "rows_in"] == info["products"]
    merged = acc.loc["silver.products (merge)"]
    assert merged["rows_in"] == merged["rows_kept"] == lake.count("silver.products")
    qp = lake.read_pandas("quarantine.products")
    d = info["defects"]
    assert set(qp["reason"]) == {"invalid_price", "duplicate"}
    assert qp.set_index("reason").loc["invalid_price", "record_key"] == d["bad_price"]
    sp = lake.read_pandas("silver.products").set_index("product_id")
    assert len(sp) == info["distinct_products"] - 1
    assert sp.loc[d["duplicate_id"], "price"] == 9.99  # the newer record won
    assert sp.loc[d["missing_image"], "image_status"] == "missing"  # kept, text-only
    assert "<" not in sp.loc[d["html_title"], "title"] and "&" not in sp.loc[d["html_title"], "title"]
    ok = sp[sp["image_status"] == "ok"]
    assert len(ok) == len(sp) - 1 and ok["image_hash"].str.len().eq(64).all() and sp["text_hash"].notna().all()
    qi = lake.read_pandas("quarantine.images")
    assert list(qi["reason"]) == ["missing"] and list(qi["product_id"]) == [d["missing_image"]]
    sq = lake.read_pandas("silver.queries")
    sj = lake.read_pandas("silver.judgments")
    assert set(sj["query_id"]) <= set(sq["query_id"]) and sj["grade"].between(0, 3).all()
    assert set(sj["product_id"]) <= set(sp.index)
    before = _snapshot(lake)
    versions = {t: lake.version(t) for t in TABLES if lake.exists(t)}
    _run(cfg, "ingest")
    _run(cfg, "clean")
    after = _snapshot(lake)
    assert before.keys() == after.keys()
    for t in before:
        pd.testing.assert_frame_equal(before[t], after[t], obj=t)
    # unchanged sources are not re-ingested: bronze stays at the same version
    assert all(lake.version(t) == versions[t] for t in versions if t.startswith("bronze."))


def _jpeg(color=(200, 30, 30), size=(40, 50)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "JPEG")
    return b.getvalue()


def _bomb_png(w=100_000, h=100_000) -> bytes:
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_every_bad_input_ends_in_quarantine_with_a_reason(spark, make_config, tmp_path):
    d = tmp_path / "shop"
    img = d / "img"
    img.mkdir(parents=True)
    (img / "good.jpg").write_bytes(_jpeg())
    (img / "good2.jpg").write_bytes(_jpeg((20, 20, 200)))
    full = _jpeg(size=(120, 160))
    (img / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (img / "empty.jpg").write_bytes(b"")
    (img / "bomb.png").write_bytes(_bomb_png())
    (d / "secret.jpg").write_bytes(_jpeg())  # a real image, but outside the image root
    header = "sku,name,price,img,updated\n"
    lines = [
        'P1,Good <b>Shirt</b> &amp; Tie,"$1,299.00",good.jpg,2026-01-01\n',
        'P2,Plain Mug,12.5 EUR,good2.jpg,2026-01-01\n',
        ',No Id Product,5.00,good.jpg,2026-01-01\n',                      # missing id
        'P3,Old Lamp,10.00,good.jpg,2026-01-01\n',                        # duplicate id: superseded
        'P3,New Lamp,11.00,good.jpg,2026-02-01\n',                        # ... by this newer record
        'P4,Broken Kettle,-3.50,good.jpg,2026-01-01\n',                   # negative price
        'P5,Mystery Box,call us,good.jpg,2026-01-01\n',                   # non-numeric price
        'P6,<div>&nbsp;</div>,4.00,good.jpg,2026-01-01\n',                # empty title after HTML junk
        'P7,"Unclosed quote,1.00,good.jpg,2026-01-01\n',                  # malformed line
        'P8,Too,many,fields,here,and,more\n',                             # malformed line
        'P9,Truncated Photo Frame,3.00,truncated.jpg,2026-01-01\n',
        'P10,Zero Byte Poster,3.00,empty.jpg,2026-01-01\n',
        'P11,Escaping Path Print,3.00,../secret.jpg,2026-01-01\n',
        'P12,Bomb Image Canvas,3.00,bomb.png,2026-01-01\n',
        'P13,Missing Image Vase,3.00,nope.jpg,2026-01-01\n',
        'P14,No Image Spoon,2.00,,2026-01-01\n',
    ]
    (d / "products.csv").write_text(header + "".join(lines))
    (d / "judgments.csv").write_text("q,sku,score\nshirt,P1,3\nmug,P2,abc\nlamp,P3,7\n,P2,1\nvase,P404,2\nmug,P2,2\n")
    events = [
        {"q": "shirt", "sku": "P1", "ev": "click", "t": "2026-02-01T10:00:00Z", "s": "a"},
        {"q": "shirt", "sku": "P1", "ev": "click", "t": "2026-02-01T10:00:00Z", "s": "a"},  # exact repeat
        {"q": "shirt", "sku": "P1", "ev": "teleport", "t": "2026-02-01T10:00:00Z", "s": "a"},
        {"q": "shirt", "sku": "P1", "ev": "purchase", "t": "not a time", "s": "a"},
    ]
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + "{not json\n")
    sources = {
        "products": {"path": str(d / "products.csv"), "image_root": str(img),
                     "columns": {"product_id": "sku", "title": "name", "price": "price", "image_ref": "img",
                                 "updated_at": "updated"}},
        "judgments": {"path": str(d / "judgments.csv"),
                      "columns": {"query": "q", "product_id": "sku", "grade": "score"}},
        "interactions": {"path": str(d / "events.jsonl"), "format": "jsonl",
                         "columns": {"query": "q", "product_id": "sku", "event_type": "ev", "event_ts": "t",
                                     "session_id": "s"}},
    }
    # most judgments and events here are bad on purpose: lift the misread-export bound of this test
    cfg = _cfg(make_config, tmp_path, sources, clean={"max_quarantine_share": 1.0})
    _run(cfg, "ingest")
    _, ctx = _run(cfg, "clean")
    lake = ctx.lake
    assert lake.count("bronze.products") == len(lines)
    q = lake.read_pandas("quarantine.products")
    reasons = q.groupby("reason")["record_key"].apply(lambda s: sorted(s.fillna("<none>"))).to_dict()
    assert reasons.pop("malformed_record") and len(q[q.reason == "malformed_record"]) == 2
    assert reasons == {"missing_id": ["<none>"], "duplicate": ["P3"], "negative_price": ["P4"],
                       "invalid_price": ["P5"], "empty_title": ["P6"]}
    assert q["detail"].notna().all() and q["record"].notna().all()
    # each quarantined row carries its own raw record, fetched back from bronze (clean.stage.attach_raw)
    bp = lake.read_pandas("bronze.products")
    assert len(q) == 7 and q["record"].is_unique and set(q["record"]) <= set(bp["_raw"])
    by_reason = q.set_index("reason")["record"]
    assert "Old Lamp" in by_reason["duplicate"] and "Broken Kettle" in by_reason["negative_price"]
    assert "call us" in by_reason["invalid_price"] and "No Id Product" in by_reason["missing_id"]
    sp = lake.read_pandas("silver.products").set_index("product_id")
    assert sp.loc["P1", "title"] == "Good Shirt & Tie" and sp.loc["P1", "price"] == 1299.0
    assert sp.loc["P2", "currency"] == "EUR" and sp.loc["P3", "title"] == "New Lamp"
    status = sp["image_status"].to_dict()
    assert status == {"P1": "ok", "P2": "ok", "P3": "ok", "P9": "corrupt", "P10": "corrupt", "P11": "outside_root",
                      "P12": "bomb", "P13": "missing", "P14": "none"}
    assert sp.loc["P1", "image_hash"] != sp.loc["P2", "image_hash"]
    qi = lake.read_pandas("quarantine.images").set_index("product_id")
    assert qi["reason"].to_dict() == {k: v for k, v in status.items() if v not in ("ok", "none")}
    assert "0-byte" in qi.loc["P10", "detail"] and "pixels" in qi.loc["P12", "detail"]
    qj = lake.read_pandas("quarantine.judgments")
    assert sorted(qj["reason"]) == ["empty_query", "grade_out_of_range", "invalid_grade", "unknown_product"]
    assert "P404" in qj.set_index("reason").loc["unknown_product", "record"]
    assert set(qj["record"]) <= set(lake.read_pandas("bronze.judgments")["_raw"])
    sj = lake.read_pandas("silver.judgments")
    assert sorted(sj["grade"]) == [2.0, 3.0]
    qint = lake.read_pandas("quarantine.interactions")
    assert sorted(qint["reason"]) == ["invalid_event_type", "invalid_timestamp", "malformed_record"]
    rec = qint.set_index("reason")["record"].to_dict()
    assert rec.pop("malformed_record") == "{not json"
    assert {k: json.loads(v) for k, v in rec.items()} == {"invalid_event_type": events[2], "invalid_timestamp": events[3]}
    assert lake.count("silver.interactions") == 1
    acc = _accounting(lake)
    assert acc.loc["silver.products", "rows_in"] == len(lines)
    assert acc.loc["silver.products", "rows_kept"] == 9 and acc.loc["silver.products", "rows_quarantined"] == 7
    assert _accounting(lake, "ingest").loc["bronze.interactions", "rows_in"] == 5  # lines of the JSONL file
    assert acc.loc["silver.interactions", "rows_kept"] == 2  # the exact repeat is folded, not lost


def test_new_retailer_export_loads_through_config_alone(spark, make_config, tmp_path):
    """Different column names, a semicolon separator, expressions in the mapping, and Parquet."""
    d = tmp_path / "retailer"
    d.mkdir()
    rows = [{"Artikelnummer": "A-1", "Bezeichnung": "Wanderschuh Alpin", "Preis": "89,90", "Waehrung": "EUR",
             "Marke": "Berg", "Kat1": "Schuhe", "Kat2": "Wandern", "Farbe": "Braun", "Bild": "a1"},
            {"Artikelnummer": "A-2", "Bezeichnung": "Regenjacke", "Preis": "129,00", "Waehrung": "EUR",
             "Marke": "Tal", "Kat1": "Jacken", "Kat2": "Regen", "Farbe": "", "Bild": ""}]
    with open(d / "export.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=";")
        w.writeheader()
        w.writerows(rows)
    pd.DataFrame({"Suchbegriff": ["Wanderschuh", "regenjacke"], "Artikel": ["A-1", "A-2"],
                  "Note": [3, 2]}).to_parquet(d / "labels.parquet")
    sources = {
        "products": {"path": str(d / "export.csv"), "options": {"sep": ";"},
                     "columns": {"product_id": "Artikelnummer", "title": "Bezeichnung", "brand": "Marke",
                                 "price": "Preis", "currency": "Waehrung",
                                 "category_path": "concat_ws(' > ', Kat1, Kat2)",
                                 "image_ref": "nullif(Bild, '') || '.jpg'"},
                     "attributes": {"colour": "Farbe"}},
        "judgments": {"path": str(d / "labels.parquet"), "format": "parquet",
                      "columns": {"query": "Suchbegriff", "product_id": "Artikel", "grade": "Note"}},
    }
    cfg = _cfg(make_config, tmp_path, sources)
    _run(cfg, "ingest")
    _, ctx = _run(cfg, "clean")
    sp = ctx.lake.read_pandas("silver.products").set_index("product_id")
    assert sp.loc["A-1", "price"] == 89.9 and sp.loc["A-1", "currency"] == "EUR"
    assert sp.loc["A-1", "category_path"] == "Schuhe > Wandern" and dict(sp.loc["A-1", "attributes"]) == {"colour": "Braun"}
    assert dict(sp.loc["A-2", "attributes"] or []) == {} and sp.loc["A-2", "image_status"] == "none"
    assert sp.loc["A-1", "image_status"] == "missing"
    sj = ctx.lake.read_pandas("silver.judgments")
    assert sorted(sj["query_norm"]) == ["regenjacke", "wanderschuh"]


def test_bad_mapping_is_a_clear_error(spark, make_config, tmp_path):
    from mmpipeline.context import StageError

    (tmp_path / "p.csv").write_text("id,name\n1,x\n")
    cfg = _cfg(make_config, tmp_path, {"products": {"path": str(tmp_path / "p.csv"),
                                                    "columns": {"product_id": "id", "title": "nme"}}})
    with pytest.raises(StageError, match="title"):
        _run(cfg, "ingest")


def _shared_sources(name: str, datasets: Path, tmp: Path) -> dict:
    text = (Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml").read_text()
    sources = yaml.safe_load(text.replace("${MMP_DATASETS:-../../shared/datasets}", str(tmp)))["sources"]
    sources.pop("voice_queries", None)  # spoken queries have their own tests (tests/integration/test_voice.py)
    return sources


@pytest.mark.slow
def test_homedepot_slice(spark, make_config, tmp_path, shared_datasets):
    (tmp_path / "homedepot").mkdir()
    df = pd.read_csv(shared_datasets / "homedepot" / "relevance.csv", dtype=str, encoding="latin-1", nrows=300)
    df.to_csv(tmp_path / "homedepot" / "relevance.csv", index=False)
    cfg = _cfg(make_config, tmp_path, _shared_sources("homedepot", shared_datasets, tmp_path),
               clean={"grade_min": 1.0, "grade_max": 3.0})
    _run(cfg, "ingest")
    _, ctx = _run(cfg, "clean")
    lake = ctx.lake
    acc = _accounting(lake)
    assert "silver.products:images" not in acc.index  # no image references in this dataset
    plain = acc[~acc.index.str.endswith("(merge)")]
    assert (plain["rows_in"] == 300).all() and (_accounting(lake, "ingest")["rows_in"] == 300).all()
    sp = lake.read_pandas("silver.products")
    assert sp["product_id"].is_unique and len(sp) == df["product_uid"].nunique()
    assert (sp["image_status"] == "none").all()
    sj = lake.read_pandas("silver.judgments")
    sq = lake.read_pandas("silver.queries")
    assert sj["grade"].between(1, 3).all() and set(sj["query_id"]) <= set(sq["query_id"])
    assert sq["frequency"].sum() == 300


@pytest.mark.slow
def test_fashion_slice_with_images_and_attribute_queries(spark, make_config, tmp_path, shared_datasets):
    import shutil

    src = shared_datasets / "fashion"
    df = pd.read_csv(src / "products.csv", dtype=str).head(200)
    (tmp_path / "fashion" / "images").mkdir(parents=True)
    df.to_csv(tmp_path / "fashion" / "products.csv", index=False)
    n_img = 0
    for pid in df["id"]:
        if (src / "images" / f"{pid}.jpg").is_file():
            shutil.copy(src / "images" / f"{pid}.jpg", tmp_path / "fashion" / "images")
            n_img += 1
    cfg = _cfg(make_config, tmp_path, _shared_sources("fashion", shared_datasets, tmp_path))
    _run(cfg, "ingest")
    _, ctx = _run(cfg, "clean")
    lake = ctx.lake
    sp = lake.read_pandas("silver.products")
    assert len(sp) == 200 and (sp["image_status"] == "ok").sum() == n_img
    assert (sp.loc[sp["image_status"] == "ok", "image_width"] > 0).all()
    assert lake.count("quarantine.images") == 200 - n_img
    sj = lake.read_pandas("silver.judgments")
    assert len(sj) > 0 and set(sj["grade"]) <= {0.0, 1.0, 2.0, 3.0} and 3.0 in set(sj["grade"])
    assert (sj["source"] == "fashion-attributes").all()
    sq = lake.read_pandas("silver.queries")
    assert set(sj["query_id"]) == set(sq["query_id"])
    attrs = sp.set_index("product_id")["attributes"].map(dict)
    full = sj[sj["grade"] == 3.0]
    colours = {a["colour"].lower() for a in attrs if a.get("colour")}
    for _, r in full.head(20).iterrows():  # a grade-3 product matches every word group of its query
        a = attrs[r["product_id"]]
        assert a["articleType" if "articleType" in a else "article_type"].lower() in r["query_norm"]
        # queries have two or three word groups: a colour, where the query names one, is the product's
        named = {c for c in colours if f" {c} " in f" {r['query_norm']} "}
        assert not named or a["colour"].lower() in r["query_norm"], (r["query_norm"], a)
    assert any(a["colour"].lower() in q for q, a in zip(full["query_norm"], full["product_id"].map(attrs)))
