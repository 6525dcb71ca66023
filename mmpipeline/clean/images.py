"""Image reference checks, run in parallel on the executors (``mapInPandas`` + PIL).

For each (product_id, image_ref): the resolved path must stay under the configured image root (no
``..`` or symlink escape), exist, be readable, be non-empty and within the byte limit; the header is
read first and the declared width x height checked against the pixel limit *before* anything is
decoded (decompression-bomb guard); then the image is fully decoded (a truncated JPEG fails here).
The content hash is the sha256 of the file bytes, for incremental embedding.

Unchanged files are not re-read: each distinct reference is checked once per run, and with the
previous run's record (``ops.image_checks``: reference, resolved path, size, modification time,
verdict) a file whose resolved path, size and mtime match keeps its verdict; only new or changed
files are opened and decoded (the path is still resolved and the root check redone every time).

Statuses: ok | none (no reference) | outside_root | missing | unreadable | corrupt | too_large |
bomb | too_small | unsupported. A product whose image fails is kept text-only; the failure is a row
in ``quarantine.images``.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame

    from mmpipeline.config import ImageLimits

IMAGE_RESULT_COLUMNS = [
    ("product_id", "string"), ("image_ref", "string"), ("image_path", "string"), ("image_status", "string"),
    ("image_detail", "string"), ("image_width", "int"), ("image_height", "int"), ("image_hash", "string"),
]


def _result(status: str, detail: str | None = None, path: str | None = None, w: int | None = None,
            h: int | None = None, digest: str | None = None) -> dict[str, Any]:
    return {"image_path": path, "image_status": status, "image_detail": detail, "image_width": w,
            "image_height": h, "image_hash": digest}


def check_image(root: str, ref: str | None, max_bytes: int, max_pixels: int, min_side: int,
                allowed_formats: list[str]) -> dict[str, Any]:
    """Check one image reference; never raises."""
    from PIL import Image

    if ref is None or not str(ref).strip():
        return _result("none")
    ref = str(ref).strip()
    root_real = os.path.realpath(root)
    path = ref if os.path.isabs(ref) else os.path.join(root_real, ref)
    real = os.path.realpath(path)
    try:
        inside = os.path.commonpath([real, root_real]) == root_real
    except ValueError:
        inside = False
    if not inside:
        return _result("outside_root", f"{ref!r} resolves to {real}, outside the image root {root_real}")
    if not os.path.isfile(real):
        return _result("missing", f"no file at {real}", real)
    try:
        size = os.path.getsize(real)
        if size == 0:
            return _result("corrupt", "0-byte file", real)
        if size > max_bytes:
            return _result("too_large", f"{size} bytes > limit {max_bytes}", real)
        with open(real, "rb") as f:
            data = f.read()
    except OSError as e:
        return _result("unreadable", f"{type(e).__name__}: {e}", real)
    digest = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return _result("bomb", f"header declares too many pixels: {e}", real)
        except Exception as e:  # noqa: BLE001 - any parse failure means not an image we can use
            return _result("corrupt", f"cannot identify image: {type(e).__name__}: {e}", real)
        w, h = im.size
        if w * h > max_pixels:
            return _result("bomb", f"header declares {w}x{h} = {w * h} pixels > limit {max_pixels}", real, w, h)
        if im.format not in allowed_formats:
            return _result("unsupported", f"format {im.format} not in {allowed_formats}", real, w, h)
        if min(w, h) < min_side:
            return _result("too_small", f"{w}x{h} below the minimum side {min_side}", real, w, h)
        try:
            im.load()  # full decode: truncated or corrupt data fails here
        except Exception as e:  # noqa: BLE001
            return _result("corrupt", f"decode failed: {type(e).__name__}: {e}", real, w, h)
        finally:
            im.close()
    return _result("ok", None, real, w, h, digest)


RECORD_COLUMNS = [
    ("image_ref", "string"), ("image_path", "string"), ("image_size", "long"), ("image_mtime_ns", "long"),
    ("image_status", "string"), ("image_detail", "string"), ("image_width", "int"), ("image_height", "int"),
    ("image_hash", "string"),
]
_PREV = [f"_prev_{c}" for c, _ in RECORD_COLUMNS[1:]]


def _stat(root_real: str, ref: str | None) -> tuple[str | None, int | None, int | None]:
    """(resolved path, size, mtime_ns) of a reference inside the root; Nones when it is not a file."""
    if ref is None or not str(ref).strip():
        return None, None, None
    ref = str(ref).strip()
    real = os.path.realpath(ref if os.path.isabs(ref) else os.path.join(root_real, ref))
    try:
        if os.path.commonpath([real, root_real]) != root_real:
            return None, None, None
        st = os.stat(real)
    except (OSError, ValueError):
        return None, None, None
    return (real, st.st_size, st.st_mtime_ns) if os.path.isfile(real) else (None, None, None)


def check_refs_pandas(pdf: "pd.DataFrame", root: str, limits: "ImageLimits") -> "pd.DataFrame":
    """Distinct references (with the previous record's ``_prev_*`` columns, null when none) ->
    RECORD_COLUMNS + ``image_reused``. A reference whose file has the recorded path, size and mtime
    keeps the recorded verdict without being opened."""
    import pandas as pd
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    root_real = os.path.realpath(root)
    rows = []
    has_prev = all(c in pdf.columns for c in _PREV)
    for i, ref in enumerate(pdf["image_ref"]):
        path, size, mtime = _stat(root_real, ref)
        if has_prev and path is not None and pdf["_prev_image_path"].iat[i] == path \
                and pdf["_prev_image_size"].iat[i] == size and pdf["_prev_image_mtime_ns"].iat[i] == mtime \
                and isinstance(pdf["_prev_image_status"].iat[i], str):
            r = {c: pdf[f"_prev_{c}"].iat[i] for c, _ in RECORD_COLUMNS[1:]}
            r["image_reused"] = True
        else:
            r = check_image(root, ref, limits.max_bytes, limits.max_pixels, limits.min_side,
                            list(limits.allowed_formats))
            r.update(image_size=size, image_mtime_ns=mtime, image_reused=False)
        r["image_ref"] = ref
        rows.append(r)
    out = pd.DataFrame(rows, columns=[c for c, _ in RECORD_COLUMNS] + ["image_reused"])
    # built from the Python values: a column with missing values would go through float64 and
    # lose the low digits of a nanosecond mtime
    for c, t in (("image_width", "Int32"), ("image_height", "Int32"), ("image_size", "Int64"),
                 ("image_mtime_ns", "Int64")):
        out[c] = pd.array([None if pd.isna(r[c]) else int(r[c]) for r in rows], dtype=t)
    return out


def check_images_pandas(pdf: "pd.DataFrame", root: str, limits: "ImageLimits") -> "pd.DataFrame":
    """Pure pandas: (product_id, image_ref) rows -> rows with the IMAGE_RESULT_COLUMNS."""
    import pandas as pd
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    res = [check_image(root, ref, limits.max_bytes, limits.max_pixels, limits.min_side, list(limits.allowed_formats))
           for ref in pdf["image_ref"]]
    out = pd.DataFrame(res, columns=[c for c, _ in IMAGE_RESULT_COLUMNS[2:]], index=pdf.index)
    out.insert(0, "image_ref", pdf["image_ref"].values)
    out.insert(0, "product_id", pdf["product_id"].values)
    for c in ("image_width", "image_height"):
        out[c] = out[c].astype("Int32")
    return out


def check_images(df: "DataFrame", root: str, limits: "ImageLimits", partitions: int | None = None,
                 previous: "DataFrame | None" = None) -> "DataFrame":
    """Spark: check every distinct ``image_ref`` of the (product_id, image_ref) rows once, on the
    executors, reusing the verdicts of ``previous`` (a frame of RECORD_COLUMNS, e.g. last run's
    ``ops.image_checks``) for unchanged files. Returns one row per input row with
    IMAGE_RESULT_COLUMNS, plus ``image_size``, ``image_mtime_ns`` and ``image_reused``."""
    from pyspark.sql import functions as F

    from mmpipeline.schemas import spark_schema

    schema = spark_schema(RECORD_COLUMNS + [("image_reused", "boolean")])
    lim = limits.model_copy()

    def _apply(batches: Iterator["pd.DataFrame"]) -> Iterator["pd.DataFrame"]:
        for pdf in batches:
            yield check_refs_pandas(pdf, root, lim)

    refs = df.select("image_ref").where(F.col("image_ref").isNotNull()).distinct()
    if previous is not None:
        prev = previous.select("image_ref", *[F.col(c).alias(f"_prev_{c}") for c, _ in RECORD_COLUMNS[1:]])
        refs = refs.join(prev.dropDuplicates(["image_ref"]), "image_ref", "left")
    if partitions:
        refs = refs.repartition(partitions, "image_ref")
    checked = refs.mapInPandas(_apply, schema=schema)
    out = df.select("product_id", "image_ref").join(checked, "image_ref", "left")
    return out.select("product_id", "image_ref", *[c for c, _ in IMAGE_RESULT_COLUMNS[2:]],
                      "image_size", "image_mtime_ns", "image_reused")


def image_record(checks: "DataFrame") -> "DataFrame":
    """This run's verdict per distinct reference (for ``ops.image_checks``)."""
    return checks.select(*[c for c, _ in RECORD_COLUMNS]).dropDuplicates(["image_ref"])
