"""The LambdaMART peer: LightGBM's ``lambdarank`` on exactly the fusion ranker's input.

What many search teams run today, trained on the same training lists (train split, early stopping
on the validation split's NDCG@k) and scored through the same whole-catalog evaluation as the
fusion ranker (``bench quality``). Its features are the fusion ranker's: the active scalar features
of the catalog (:meth:`PairFeaturizer.active_features` -- no image column without images, no text
field column without text fields) and, when the ranker uses them (``rank.use_vectors``), the
query x product interaction vectors (``q * p_text`` and, with images, ``q * p_image``).

Labels: the training label in [0, 1] (normalised grade) quantised to ``LEVELS + 1`` integer
relevance levels with linear gains (LightGBM's default gains are 2^l - 1; the evaluation uses the
label itself as the gain, so linear gains optimise the same NDCG).

Grade: with ``rank.lambdamart_grade`` the peer also trains a LightGBM regression (L2) on the judged
pairs' normalised grade (early stopping on the validation split's judged pairs): what a team would
run for grade RMSE, the fair peer of the fusion ranker's grade head (``rank.grade_weight``). Its
prediction is the peer's grade in ``evaluate``'s RMSE; the lambdarank score is reported next to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpipeline.retrieval.features import SCALAR_FEATURES

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import RankConfig
    from mmpipeline.rank.train import ListData
    from mmpipeline.retrieval.features import PairFeaturizer

log = logging.getLogger(__name__)

LEVELS = 12  # integer relevance levels 0..12: exact for grades on thirds, sixths and quarters


@dataclass
class LambdaMartRanker:
    """A trained booster and the columns it reads; ``score_arrays`` takes the featurizer's arrays."""

    booster: Any
    features: list[str]
    use_vectors: bool
    use_image: bool
    best_iteration: int
    info: dict[str, Any] = field(default_factory=dict)
    grade_booster: Any = None  # LightGBM regression on the judged grade (rank.lambdamart_grade): the peer's grade
    grade_iteration: int = 0

    @property
    def has_grade_head(self) -> bool:
        return self.grade_booster is not None

    def grade_arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 8192, device: Any = None) -> np.ndarray:
        """Predicted normalised grade: the regression booster (the ranking score without one)."""
        if self.grade_booster is None:
            return self.score_arrays(arrays, batch_size, device)
        x = self.matrix(arrays)
        if not len(x):
            return np.zeros(0, np.float64)
        return np.asarray(self.grade_booster.predict(x, num_iteration=self.grade_iteration or None), dtype=np.float64)

    def matrix(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return design_matrix(arrays, self.features, self.use_vectors, self.use_image)

    def score_arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 8192, device: Any = None) -> np.ndarray:
        x = self.matrix(arrays)
        if not len(x):
            return np.zeros(0, np.float64)
        return np.asarray(self.booster.predict(x, num_iteration=self.best_iteration or None), dtype=np.float64)

    def feature_importance(self) -> dict[str, float]:
        """Gain importance of the scalar features (vector dimensions summed per vector)."""
        gain = self.booster.feature_importance(importance_type="gain")
        names = list(self.features)
        out = {n: float(g) for n, g in zip(names, gain[:len(names)])}
        rest = gain[len(names):]
        if len(rest):
            out["q*p_vectors"] = float(rest.sum())
        total = sum(out.values()) or 1.0
        return {k: round(v / total, 4) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def design_matrix(arrays: dict[str, np.ndarray], features: list[str], use_vectors: bool, use_image: bool) -> np.ndarray:
    cols = [SCALAR_FEATURES.index(c) for c in features]
    parts = [np.asarray(arrays["scalars"], np.float32)[:, cols]]
    if use_vectors:
        parts.append(arrays["q_text"] * arrays["p_text"])
        if use_image:
            parts.append(arrays["q_text"] * arrays["p_image"])
    return np.concatenate(parts, axis=1).astype(np.float32)


def _dataset(featurizer: "PairFeaturizer", data: "ListData", features: list[str], use_vectors: bool,
             use_image: bool, reference=None):
    import lightgbm as lgb

    groups = [g for g in data.groups if len(g)]
    order = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    x = design_matrix(data.gather(featurizer, order), features, use_vectors, use_image)
    y = np.rint(np.clip(data.labels[order], 0.0, 1.0) * LEVELS).astype(np.int32)
    return lgb.Dataset(x, label=y, group=[len(g) for g in groups], reference=reference,
                       feature_name=list(features) + [f"v{i}" for i in range(x.shape[1] - len(features))],
                       free_raw_data=False)


def fit_lambdamart(featurizer: "PairFeaturizer", train: "ListData", valid: "ListData | None",
                   rc: "RankConfig") -> LambdaMartRanker:
    """Train LightGBM lambdarank on the training lists; early stopping on validation NDCG@eval_k."""
    import lightgbm as lgb

    t0 = time.perf_counter()
    features = featurizer.active_features()
    use_image = "has_image" in features
    dtrain = _dataset(featurizer, train, features, rc.use_vectors, use_image)
    params = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [rc.eval_k], "label_gain": list(range(LEVELS + 1)),
        "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20, "feature_fraction": 0.9,
        "bagging_fraction": 0.9, "bagging_freq": 1, "lambdarank_truncation_level": 20,
        "seed": rc.seed, "deterministic": True, "force_row_wise": True, "num_threads": 2, "verbose": -1,
    }
    valid_sets, callbacks = [], [lgb.log_evaluation(0)]
    if valid is not None and len(valid):
        dvalid = _dataset(featurizer, valid, features, rc.use_vectors, use_image, reference=dtrain)
        valid_sets = [dvalid]
        callbacks.append(lgb.early_stopping(50, verbose=False))
    booster = lgb.train(params, dtrain, num_boost_round=rc.lambdamart_rounds, valid_sets=valid_sets or None,
                        valid_names=["valid"] if valid_sets else None, callbacks=callbacks)
    best = int(booster.best_iteration or booster.current_iteration())
    score = (booster.best_score or {}).get("valid", {}).get(f"ndcg@{rc.eval_k}")
    info = {"rounds": best, "features": dtrain.num_feature(), "features_used": list(features),
            "valid_ndcg_at_10_lightgbm": round(float(score), 4) if score is not None else None,
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("lambdamart: %d rounds, %d features (%s), %.1fs", best, info["features"], features, info["seconds"])
    ranker = LambdaMartRanker(booster, features, rc.use_vectors, use_image, best, info)
    if rc.lambdamart_grade:
        ranker.grade_booster, ranker.grade_iteration = _fit_grade(featurizer, train, valid, features, rc, use_image, params)
        info["grade_rounds"] = ranker.grade_iteration
    return ranker


def _judged(featurizer: "PairFeaturizer", data: "ListData", features: list[str], use_vectors: bool, use_image: bool):
    idx = np.flatnonzero(np.isfinite(data.grades))
    return design_matrix(data.gather(featurizer, idx), features, use_vectors, use_image), data.labels[idx]


def _fit_grade(featurizer, train, valid, features, rc, use_image, rank_params) -> tuple[Any, int]:
    """The peer's grade: LightGBM regression (L2) on the judged pairs' normalised grade, early
    stopping on the validation split's judged pairs (the fair peer of the fusion ranker's grade head)."""
    import lightgbm as lgb

    x, y = _judged(featurizer, train, features, rc.use_vectors, use_image)
    if not len(y):
        return None, 0
    params = {k: v for k, v in rank_params.items() if k not in ("objective", "metric", "eval_at", "label_gain",
                                                                  "lambdarank_truncation_level")}
    params.update({"objective": "regression", "metric": "rmse"})
    dtrain = lgb.Dataset(x, label=y, free_raw_data=False)
    valid_sets, callbacks = None, [lgb.log_evaluation(0)]
    if valid is not None and len(valid):
        xv, yv = _judged(featurizer, valid, features, rc.use_vectors, use_image)
        if len(yv):
            valid_sets = [lgb.Dataset(xv, label=yv, reference=dtrain)]
            callbacks.append(lgb.early_stopping(50, verbose=False))
    booster = lgb.train(params, dtrain, num_boost_round=rc.lambdamart_rounds, valid_sets=valid_sets,
                        valid_names=["valid"] if valid_sets else None, callbacks=callbacks)
    return booster, int(booster.best_iteration or booster.current_iteration())
