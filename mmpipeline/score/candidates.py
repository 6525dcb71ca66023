"""Re-export: candidate generation lives in :mod:`mmpipeline.retrieval.candidates` (one retrieval
path for scoring and evaluation)."""

from mmpipeline.retrieval.candidates import (CANDIDATE_COLUMNS, SOURCE_ORDER, CandidateGenerator,
                                             candidate_recall)
from mmpipeline.retrieval.dense import Vectors
from mmpipeline.retrieval.text import product_text

__all__ = ["CANDIDATE_COLUMNS", "SOURCE_ORDER", "CandidateGenerator", "Vectors", "candidate_recall", "product_text"]
