"""Nightly batch scoring and search-index publishing.

* :mod:`mmpipeline.score.queries`    the query set: head queries by frequency + an explicit list;
* candidates come from :mod:`mmpipeline.retrieval.candidates` (dense top K union BM25 top K), the one
  retrieval path evaluation uses too;
* :mod:`mmpipeline.score.scoring`    the champion model over the candidate pairs (local batches or Spark);
* :mod:`mmpipeline.score.vectors`    one fused vector per product for an online ANN index;
* :mod:`mmpipeline.score.checks`     Great Expectations checks of a ranking before it is published;
* :mod:`mmpipeline.score.job`        ``run(ctx)``: the score stage (writes gold.search_ranking, gold.product_vectors);
* :mod:`mmpipeline.score.publish`    ``run(ctx)``: validate then mark current (the stage);
* :mod:`mmpipeline.score.index`      the served index's event log: ``reconcile``, ``rollback``, ``index_status``;
* :mod:`mmpipeline.score.search`     ``search``: the published top-k for a query (the search CLI).
"""
