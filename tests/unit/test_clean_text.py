"""Scalar cleaning functions (no Spark): text, queries, prices; and the image checks on real files."""

import io
import struct
import zlib

import pytest
from PIL import Image

from mmpipeline.clean.images import check_image
from mmpipeline.clean.text import clean_text, normalize_query, parse_price


@pytest.mark.parametrize("raw,expected", [
    ("<b>Solace Dress</b>&nbsp;&nbsp;&#8482; <br/>", "Solace Dress TM"),
    ("  many   \t spaces\n", "many spaces"),
    ("&lt;i&gt;encoded&lt;/i&gt; tags", "encoded tags"),
    ("5 < 6 and 7 > 3", "5 < 6 and 7 > 3"),
    ("ＡＢＣ１２３ ﬁne", "ABC123 fine"),  # NFKC: full-width and ligatures
    ("<div>&nbsp;</div>", None),
    (None, None),
])
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


@pytest.mark.parametrize("raw,expected", [
    ("1/2 inch PVC Pipe.", "1/2 inch pvc pipe"),
    ("2x4 Lumber!!", "2x4 lumber"),
    ("Men  Navy-Blue Shirts?", "men navy-blue shirts"),
    ("it's <b>OK</b>", "it's ok"),
    ("?!", None),
])
def test_normalize_query(raw, expected):
    assert normalize_query(raw) == expected


@pytest.mark.parametrize("raw,value,currency,error", [
    ("$1,299.00", 1299.0, "USD", None),
    ("12.5 EUR", 12.5, "EUR", None),
    ("12,50 EUR", 12.5, "EUR", None),
    ("€1.299,00", 1299.0, "EUR", None),
    ("USD 65.74", 65.74, "USD", None),
    ("3", 3.0, None, None),
    ("-3.50", -3.5, None, "negative_price"),
    ("(12.00)", -12.0, None, "negative_price"),
    ("call for price", None, None, "invalid_price"),
    ("2 for $5", None, "USD", "invalid_price"),
    ("12.5.6", None, None, "invalid_price"),
    ("9,999,999", 9999999.0, None, "price_out_of_range"),
    ("", None, None, None),
    (None, None, None, None),
])
def test_parse_price(raw, value, currency, error):
    v, cur, err, detail = parse_price(raw, max_price=1e6)
    assert (v, cur, err) == (value, currency, error)
    assert (detail is None) == (err is None)


def _jpeg(size=(40, 50)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(b, "JPEG")
    return b.getvalue()


def test_check_image_statuses(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    (root / "ok.jpg").write_bytes(_jpeg())
    full = _jpeg((200, 200))
    (root / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "tiny.jpg").write_bytes(_jpeg((4, 4)))
    (root / "text.jpg").write_text("not an image")
    (tmp_path / "outside.jpg").write_bytes(_jpeg())
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    (root / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                                    + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    limits = dict(max_bytes=10_000_000, max_pixels=1_000_000, min_side=8, allowed_formats=["JPEG", "PNG"])
    status = {ref: check_image(str(root), ref, **limits)["image_status"] for ref in
              ["ok.jpg", "trunc.jpg", "zero.jpg", "tiny.jpg", "text.jpg", "../outside.jpg", "link.jpg",
               str(tmp_path / "outside.jpg"), "bomb.png", "nope.jpg", None, "  "]}
    assert status == {"ok.jpg": "ok", "trunc.jpg": "corrupt", "zero.jpg": "corrupt", "tiny.jpg": "too_small",
                      "text.jpg": "corrupt", "../outside.jpg": "outside_root", "link.jpg": "outside_root",
                      str(tmp_path / "outside.jpg"): "outside_root", "bomb.png": "bomb", "nope.jpg": "missing",
                      None: "none", "  ": "none"}
    ok = check_image(str(root), "ok.jpg", **limits)
    assert (ok["image_width"], ok["image_height"]) == (40, 50) and len(ok["image_hash"]) == 64
    big = check_image(str(root), "ok.jpg", max_bytes=10, max_pixels=10**6, min_side=1, allowed_formats=["JPEG"])
    assert big["image_status"] == "too_large"
