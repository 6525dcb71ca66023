"""One fused vector per product for an online approximate-nearest-neighbour index.

Fusion: ``v = normalize(w_text * normalize(text) + w_image * normalize(image))``. The image tower is
trained to land in the text-embedding space, so both vectors live in one space of the text
encoder's dimension: the online index is queried with the plain text embedding of the query, and
``cos(q, v)`` is (up to the per-product norm) ``w_text * cos(q, text) + w_image * cos(q, image)`` --
the same late fusion the candidate generator uses, at the cost of one vector per product.
A product without a photo gets its text vector alone (no penalty for a missing modality), one
without text its image vector alone. If the image vectors are not in the text space (their
dimension differs, e.g. a pretrained CNN without a trained projection), the weighted, normalised
parts are concatenated instead (the query side then needs ``[q, q]``); the ``fusion`` column says
which was done.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mmpipeline.retrieval.dense import Vectors, normalize

log = logging.getLogger(__name__)

FUSE_BLOCK = 65_536  # products fused at a time


def fuse_product_vectors(product_ids: np.ndarray, text: Vectors, image: Vectors,
                         weights: dict[str, float]) -> pd.DataFrame:
    """Rows (product_id, modalities, fusion, text_model, image_model, dim, vector) for products
    of ``product_ids`` that have at least one vector, in ``product_ids`` order."""
    wt, wi = float(weights.get("text", 0.5)), float(weights.get("image", 0.5))
    if wt < 0 or wi < 0 or wt + wi <= 0:
        raise ValueError(f"score.fusion_weights must be non-negative and not all zero, got {weights}")
    ids = np.asarray(product_ids, dtype=object)
    ti = np.array([text.pos.get(p, -1) for p in ids], dtype=np.int64) if len(text) else np.full(len(ids), -1)
    ii = np.array([image.pos.get(p, -1) for p in ids], dtype=np.int64) if len(image) else np.full(len(ids), -1)
    has_t, has_i = ti >= 0, ii >= 0
    keep = has_t | has_i
    ids, ti, ii, has_t, has_i = ids[keep], ti[keep], ii[keep], has_t[keep], has_i[keep]
    same_space = not len(text) or not len(image) or text.dim == image.dim
    if same_space:
        dim = text.dim or image.dim
        fusion = f"wsum(text={wt:g},image={wi:g})"
    else:
        log.warning("product vectors: text dim %d != image dim %d; concatenating the weighted parts",
                    text.dim, image.dim)
        dim = text.dim + image.dim
        fusion = f"concat(text={wt:g},image={wi:g})"
    # block by block into the one output matrix: the temporaries stay at a block (whole-matrix
    # arithmetic made four catalog-sized copies, the score driver's peak at 1M products)
    out = np.empty((len(ids), dim), dtype=np.float32)
    for s in range(0, len(ids), FUSE_BLOCK):
        sl = slice(s, s + FUSE_BLOCK)
        bt, bi = has_t[sl], has_i[sl]
        blk = np.zeros((len(bt), dim), dtype=np.float32)
        if same_space:
            if bt.any():
                blk[bt] += wt * normalize(text.matrix[ti[sl][bt]])
            if bi.any():
                blk[bi] += wi * normalize(image.matrix[ii[sl][bi]])
        else:
            blk[bt, :text.dim] = wt * normalize(text.matrix[ti[sl][bt]])
            blk[bi, text.dim:] = wi * normalize(image.matrix[ii[sl][bi]])
        out[sl] = normalize(blk)
    modalities = np.where(has_t & has_i, "text+image", np.where(has_t, "text", "image"))
    log.info("product vectors: %d fused (%d text+image, %d text only, %d image only), dim %d, %s",
             len(ids), int((has_t & has_i).sum()), int((has_t & ~has_i).sum()), int((~has_t & has_i).sum()),
             dim, fusion)
    return pd.DataFrame({
        "product_id": ids, "modalities": modalities, "fusion": fusion,
        "text_model": text.model_name, "image_model": image.model_name, "dim": np.int32(dim),
        "vector": list(out),
    })
