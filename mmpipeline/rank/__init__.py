"""Fusion ranker: training data, multimodal model, MLflow tracking, evaluation and champion gating.

Public API used downstream (scoring):

* :class:`mmpipeline.retrieval.features.PairFeaturizer` (re-exported as ``mmpipeline.rank.features``;
  it lives in the shared retrieval package) -- ``from_lake(lake, cfg)`` and
  ``transform(queries, query_ids, product_ids) -> DataFrame`` (the model input);
* :func:`mmpipeline.rank.registry.load_ranker` -- ``load_ranker(cfg, alias)`` -> ``.predict(df)``,
  ``.name``, ``.version``, ``.run_id``.
"""
