"""The pure evaluation (metrics per system and slice, grade calibration) and the gate decision,
on tiny hand-made examples with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmpipeline.config import RankConfig
from mmpipeline.rank.evaluation import Rankings, Relevance, calibrated_rmse, compute_metrics
from mmpipeline.rank.gate import SLICES, decide, gate_decision
from mmpipeline.rank.metrics import FLOOR

RC = RankConfig(relevant_min_label=0.75, eval_k=10, recall_k=2, long_query_tokens=3)


def _example():
    # catalog rows 0..3; row 0 and row 3 have no image
    no_image = np.array([True, False, False, True])
    rel = Relevance(query_ids=["q0", "q1"], queries=["drill", "cordless drill with battery"],
                    rows=[np.array([0, 1]), np.array([3, 2])], gains=[np.array([1.0, 0.5]), np.array([1.0, 1.0])])
    r = Rankings()
    # q0 ranks rows 1, 2, 0: gains 0.5, 0, 1.0
    r.add("sys", np.array([0, 1, 2]), np.array([0.1, 0.9, 0.5]))
    # q1 retrieves row 2 first; row 3 (judged, relevant) was not retrieved at all
    r.add("sys", np.array([2, 1, 3]), np.array([0.8, 0.3, FLOOR]))
    return r, rel, no_image


def test_metrics_per_slice_on_a_hand_made_ranking():
    r, rel, no_image = _example()
    m = compute_metrics(r, rel, no_image, RC)["sys"]
    assert set(m) == set(SLICES)
    # q0: DCG = 0.5/log2(2) + 1/log2(4) = 1.0; IDCG = 1 + 0.5/log2(3)
    ndcg_q0 = 1.0 / (1 + 0.5 / math.log2(3))
    # q1: row 2 at rank 1 (gain 1), row 3 never ranked: DCG = 1; IDCG = 1 + 1/log2(3)
    ndcg_q1 = 1.0 / (1 + 1 / math.log2(3))
    assert m["short_queries"]["ndcg_at_10"] == pytest.approx(ndcg_q0)
    assert m["long_queries"]["ndcg_at_10"] == pytest.approx(ndcg_q1)
    assert m["all"]["ndcg_at_10"] == pytest.approx((ndcg_q0 + ndcg_q1) / 2)
    assert m["all"]["queries"] == 2
    # relevant = gain >= 0.75: q0's only relevant row is 3rd (RR 1/3); q1's first row is relevant
    assert m["all"]["mrr"] == pytest.approx((1 / 3 + 1) / 2)
    # recall@2: q0 0 of 1, q1 1 of 2 (row 3 was not retrieved)
    assert m["all"]["recall_at_2"] == pytest.approx((0 + 0.5) / 2)
    # no-image slice: only rows 0 and 3 can be relevant. q0: row 0 at rank 3 -> DCG 0.5, IDCG 1;
    # q1: row 3 not retrieved -> 0
    assert m["no_image_products"]["ndcg_at_10"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["no_image_products"]["queries"] == 2


def test_metrics_of_an_empty_slice_are_nan_with_zero_queries():
    r, rel, no_image = _example()
    m = compute_metrics(r, rel, np.zeros(4, bool), RC)["sys"]  # every product has an image
    assert m["no_image_products"]["queries"] == 0 and math.isnan(m["no_image_products"]["ndcg_at_10"])


def test_calibrated_rmse_fits_on_valid_and_clips_to_the_grade_range():
    # valid: grade = score + 1 exactly; test score 5 maps to 6, clipped to the top grade 3
    out = calibrated_rmse(np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0]), np.array([0.5, 5.0]),
                          np.array([1.5, 3.0]), (1.0, 3.0), mean_grade=2.0)
    assert out["rmse"] == pytest.approx(0.0, abs=1e-9)
    assert out["rmse_mean_baseline"] == pytest.approx(math.sqrt((0.5 ** 2 + 1.0 ** 2) / 2))
    assert out["rmse_pairs"] == 2
    # constant scores: the calibration predicts the mean validation grade
    flat = calibrated_rmse(np.zeros(3), np.array([1.0, 2.0, 3.0]), np.zeros(2), np.array([2.0, 2.0]), (1.0, 3.0), 2.0)
    assert flat["rmse"] == pytest.approx(0.0, abs=1e-9)


def _m(v, **slices):
    out = {s: {"ndcg_at_10": v} for s in SLICES}
    for s, x in slices.items():
        out[s] = {"ndcg_at_10": x}
    return out


def test_gate_decision_cases():
    rc = RankConfig(promote_margin=0.01, slice_tolerance=0.02)
    ok, why = decide(_m(0.1), None, rc)
    assert ok and "no current champion" in why[0]
    assert decide(_m(0.7), _m(0.6), rc)[0]
    # a win overall but one slice regresses by more than the tolerance: rejected, and it says which
    ok, why = decide(_m(0.7, long_queries=0.55), _m(0.6), rc)
    assert not ok and any("slice long_queries regresses" in w for w in why)
    # a regression within the tolerance does not block
    assert decide(_m(0.7, long_queries=0.585), _m(0.6), rc)[0]
    # a win smaller than the margin is no win
    ok, why = decide(_m(0.605), _m(0.6), rc)
    assert not ok and "does not beat" in why[0]
    # a non-finite challenger never wins; a non-finite champion always loses
    assert not decide(_m(float("nan")), _m(0.6), rc)[0]
    assert decide(_m(0.5), _m(float("nan")), rc)[0]
    # a slice a system could not be measured on is skipped, not a regression
    assert decide(_m(0.7, no_image_products=float("nan")), _m(0.6), rc)[0]


def test_gate_never_promotes_the_current_champion_again():
    rc = RankConfig()
    ok, why = gate_decision(_m(0.9), None, rc, challenger_version="3", champion_version="3")
    assert not ok and why == ["version 3 is already the champion"]
    assert gate_decision(_m(0.9), None, rc, challenger_version="4", champion_version=None)[0]
    assert gate_decision(_m(0.9), _m(0.5), rc, challenger_version="4", champion_version="3")[0]
