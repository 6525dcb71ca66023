"""Re-export: the pair featurizer lives in :mod:`mmpipeline.retrieval.features` (shared with scoring)."""

from mmpipeline.retrieval.features import (FEATURE_COLUMNS, INDICATORS, MODALITY_SCALARS, SCALAR_FEATURES,
                                           VECTOR_FEATURES, PairFeaturizer, arrays_to_frame, frame_to_arrays)

__all__ = ["FEATURE_COLUMNS", "INDICATORS", "MODALITY_SCALARS", "SCALAR_FEATURES", "VECTOR_FEATURES",
           "PairFeaturizer", "arrays_to_frame", "frame_to_arrays"]
