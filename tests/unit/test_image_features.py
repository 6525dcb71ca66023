"""Query-relative image features (mmpipeline.retrieval.image_features) through the featurizer."""

import numpy as np
import pandas as pd

from mmpipeline.retrieval import image_features
from mmpipeline.retrieval.features import IMAGE_FEATURES, SCALAR_FEATURES, PairFeaturizer


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _catalog():
    """Two queries on different cosine scales: q_a sees every photo at about 0.6-0.8, q_b at about
    0.0-0.3. p0 is q_a's most ordinary photo, p5 q_b's best."""
    rng = np.random.default_rng(0)
    dim = 8
    qa, qb = np.eye(dim)[0], np.eye(dim)[1]
    img = []
    for k in range(6):
        v = 0.75 * qa + (0.05 * k if k < 3 else -0.05 * (k - 3)) * qa + (0.04 * k) * qb
        v = v + 0.02 * rng.standard_normal(dim)
        v[2] = 0.6
        img.append(v)
    img = _unit(np.array(img))
    img[5] = _unit(0.6 * qa + 0.5 * qb + 0.6 * np.eye(dim)[2])
    ids = [f"p{k}" for k in range(7)]  # p6 has no photo
    products = pd.DataFrame({"product_id": ids, "title": ["shirt"] * 7})
    text = _unit(np.ones((7, dim)))
    fz = PairFeaturizer(products, {"text": (ids, text), "image": (ids[:6], img)},
                        (["qa", "qb"], _unit(np.stack([qa, qb]))))
    return fz


def test_a_pair_gets_the_same_value_whatever_it_is_featurised_with():
    """Normalised against a fixed reference, not within the rows of the call: a (query, product)
    pair has the same feature in training lists, evaluation candidates and scoring batches."""
    fz = _catalog()
    alone = fz.scalar_features(["a"], ["qa"], ["p3"])
    crowd = fz.scalar_features(["a"] * 4 + ["b"], ["qa"] * 4 + ["qb"], ["p0", "p3", "p5", "p6", "p1"])
    for c in image_features.FEATURES:
        assert alone[c].iloc[0] == crowd[c].iloc[1]


def test_the_scale_is_the_query_s_own():
    """Raw cosine puts q_a's most ordinary photo above q_b's best one; the query-relative features
    put q_b's best photo at the top of its query and q_a's ordinary one below its query's middle."""
    fz = _catalog()
    f = fz.scalar_features(["a", "b"], ["qa", "qb"], ["p3", "p5"])
    assert f["cos_image"].iloc[0] > f["cos_image"].iloc[1]
    assert f["cos_image_z"].iloc[1] > f["cos_image_z"].iloc[0]
    assert f["cos_image_pct"].iloc[1] > f["cos_image_pct"].iloc[0]


def test_no_photo_no_value_and_no_column_without_images():
    fz = _catalog()
    f = fz.scalar_features(["a", "a"], ["qa", "qa"], ["p6", "unknown"])
    assert (f[image_features.FEATURES].to_numpy() == 0).all()
    assert set(image_features.FEATURES) <= set(IMAGE_FEATURES) <= set(SCALAR_FEATURES)
    ids = ["p0", "p1"]
    textonly = PairFeaturizer(pd.DataFrame({"product_id": ids, "title": ["a", "b"]}),
                              {"text": (ids, _unit(np.ones((2, 4))))}, (["q"], _unit(np.ones((1, 4)))))
    assert not set(image_features.FEATURES) & set(textonly.active_features())
    assert (textonly.scalar_features(["a"], ["q"], ["p0"])[image_features.FEATURES].to_numpy() == 0).all()


def test_reference_is_a_seeded_sample_of_the_photos():
    has = np.zeros(10_000, np.float32)
    has[::2] = 1
    a, b = image_features.reference_rows(has, size=100), image_features.reference_rows(has, size=100)
    assert len(a) == 100 and (a == b).all() and (has[a] == 1).all()
    assert len(image_features.reference_rows(has[:50])) == 25


def test_percentile_ignores_float_noise_between_the_pair_and_its_reference_copy():
    """The product's own photo is in the reference; its cosine computed pairwise (einsum) and the
    reference copy (matrix product) may differ in the last bits. That noise, and which other queries
    share the batch, must not move the percentile by 1/m (it made local and cluster scores differ)."""
    rng = np.random.default_rng(3)
    ref = _unit(rng.standard_normal((50, 16)))
    queries = _unit(rng.standard_normal((5, 16)))
    q = queries[0]
    exact = ref @ q
    for noise in (-3e-7, 0.0, 3e-7):
        for batch in (q[None, :], queries):  # alone, and batched with other queries
            cos = np.full(len(batch), exact[7] + noise, np.float32)
            cos[1:] = 0.0
            out = image_features.query_relative(batch, cos, np.ones(len(batch)), ref)
            assert out["cos_image_pct"][0] == np.float32(np.sum(exact < exact[7] - image_features.PCT_TOLERANCE) / 50)
