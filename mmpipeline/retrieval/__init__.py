"""Retrieval shared by training, evaluation (rank) and serving (score).

One package so the three cannot drift apart:

* :mod:`.text` -- the tokenizer and the ONE definition of a product's BM25 text (``product_text``);
* :mod:`.keys` -- query keys: ``normalize_query`` and ``query_id_for`` (the clean stage's id);
* :mod:`.bm25` -- :class:`BM25Index` (bm25s) over the whole catalog;
* :mod:`.dense` -- :class:`Vectors`, ``normalize`` and the exact numpy :class:`DenseIndex`;
* :mod:`.ann` -- FAISS dense search (exact / IVF / HNSW, tuned to a recall target) and its
  versioned artifacts next to the lake (:class:`AnnStore`, ``ops.retrieval_indexes``);
* :mod:`.embeddings` -- ``pick_model`` (which embedding model's vectors to use) and ``load_vectors``;
* :mod:`.encoder` -- the query-side text encoder (the embed stage's text model);
* :mod:`.features` -- :class:`PairFeaturizer`, the ranker's (query, product) features;
* :mod:`.candidates` -- :class:`CandidateGenerator`: the candidate set scoring publishes and
  evaluation measures, and ``candidate_recall``.

Imports point one way: ``rank`` and ``score`` import ``retrieval``; ``retrieval`` imports neither
(and reaches ``embed`` / ``clean`` only through the two lazy calls in :mod:`.encoder` and
:mod:`.keys`). The light names are re-exported here; import the heavier modules directly.
"""

from mmpipeline.retrieval.bm25 import BM25Index
from mmpipeline.retrieval.dense import DenseIndex, Vectors, normalize
from mmpipeline.retrieval.keys import normalize_query, query_id_for
from mmpipeline.retrieval.text import BM25_FIELDS, product_text, tokenize

__all__ = ["BM25Index", "BM25_FIELDS", "DenseIndex", "Vectors", "normalize", "normalize_query", "product_text",
           "query_id_for", "tokenize"]
