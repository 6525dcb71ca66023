"""How the ranker sees query-image similarity: relative to the query, not as a raw cosine.

The raw ``cos_image`` (query text vector . product image vector) lives on a scale that differs from
query to query: for one query most photos score 0.30, for another 0.05, so a threshold a ranker
learns on it means something different for every query. What carries the signal is how a
product's photo ranks *for this query* among the catalog's photos. Both features here measure
that against a fixed reference: a seeded sample of the catalog's product images
(:func:`reference_rows`, at most ``REFERENCE_SIZE``), the same for every query, every call and
every candidate set -- so a training row, an evaluation row and a scored row of the same
(query, product) pair get the same value, whichever other pairs are featurised with it:

* ``cos_image_z``: the z-score of ``cos_image`` within the query's cosines to the reference photos;
* ``cos_image_pct``: the share of reference photos the product's photo beats for this query.

A product without an image (or an unknown product) gets 0 in both, next to its ``has_image`` 0; a
catalog without any image has neither column (they are image features, absent with the modality).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FEATURES = ["cos_image_z", "cos_image_pct"]
REFERENCE_SIZE = 2048  # reference photos per catalog: enough for a stable mean / spread / percentile
_SEED = 20261120
PCT_TOLERANCE = 1e-5  # cosines closer than this count as equal (float32 noise between computations)


def reference_rows(has_image: np.ndarray, size: int = REFERENCE_SIZE, seed: int = _SEED) -> np.ndarray:
    """Catalog rows of the reference photos: every row with an image, or a seeded sample of ``size``
    of them (sorted). Depends only on the catalog, so it is the same in every process."""
    rows = np.flatnonzero(np.asarray(has_image) > 0)
    if len(rows) > size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=size, replace=False))
    return rows


def query_relative(qvec: np.ndarray, cos_image: np.ndarray, has_image: np.ndarray,
                   reference: np.ndarray) -> dict[str, np.ndarray]:
    """``cos_image_z`` and ``cos_image_pct`` for pairs (query vector ``qvec[i]``, a product whose raw
    query-image cosine is ``cos_image[i]``); ``has_image[i]`` (0/1 per pair) zeroes pairs without a
    photo. ``reference``: the reference photos' vectors ([m, dim])."""
    n = len(cos_image)
    z = np.zeros(n, np.float32)
    pct = np.zeros(n, np.float32)
    if not n or not len(reference):
        return {"cos_image_z": z, "cos_image_pct": pct}
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    q = np.ascontiguousarray(qvec, dtype=np.float32)
    uniq, inv = np.unique(q, axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    cos = np.asarray(cos_image, dtype=np.float32)
    for u in range(len(uniq)):
        # one query at a time (a matrix-vector product), so the reference cosines do not depend on
        # which other queries share the batch
        sims = np.sort(ref @ uniq[u])
        mu, sd = float(sims.mean()), max(float(sims.std()), 1e-6)
        idx = np.flatnonzero(inv == u)
        z[idx] = (cos[idx] - mu) / sd
        # photos beaten by more than float noise: the product's own photo is in the reference, and its
        # cosine computed pairwise differs from the reference copy in the last bits, which would add
        # or drop 1/m depending on the batch (seen as local vs cluster scores differing)
        pct[idx] = np.searchsorted(sims, cos[idx] - PCT_TOLERANCE, side="left") / len(sims)
    on = np.asarray(has_image, dtype=np.float32) > 0
    return {"cos_image_z": np.where(on, z, 0.0).astype(np.float32),
            "cos_image_pct": np.where(on, pct, 0.0).astype(np.float32)}


def for_featurizer(fz: Any, qvec: np.ndarray, cos_image: np.ndarray, r: np.ndarray,
                   known: np.ndarray) -> dict[str, np.ndarray]:
    """The hook :meth:`PairFeaturizer.scalar_features` calls: the reference rows are cached on the
    featurizer (one catalog, one reference)."""
    ref = fz.__dict__.get("_image_reference")
    if ref is None:
        ref = fz.__dict__["_image_reference"] = np.asarray(fz.p_image[reference_rows(fz.has_image)], np.float32)
    return query_relative(qvec, cos_image, fz.has_image[r] * known, ref)
