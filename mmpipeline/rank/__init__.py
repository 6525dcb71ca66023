"""Fusion ranker: training data, multimodal model, MLflow tracking, evaluation and champion gating.

Modules (pure computation apart from the two stages):

* :mod:`~mmpipeline.rank.fusion`     the model: one module per fusion kind behind ``FusionRanker``, ``build_ranker``;
* :mod:`~mmpipeline.rank.losses`, :mod:`~mmpipeline.rank.metrics`  ranking losses and metrics;
* :mod:`~mmpipeline.rank.evaluation` whole-catalog metrics per system and slice, grade calibration;
* :mod:`~mmpipeline.rank.gate`       the promotion decision (challenger vs champion and baselines, per slice);
* :mod:`~mmpipeline.rank.lambdamart` the LightGBM lambdarank peer on the ranker's own features (bench quality);
* :mod:`~mmpipeline.rank.plots`      evaluation figures;
* :mod:`~mmpipeline.rank.model`      the MLflow pyfunc wrapper of the registered model;
* :mod:`~mmpipeline.rank.train`, :mod:`~mmpipeline.rank.evaluate`  the stages (lake, MLflow, registry I/O).

Public API used downstream (scoring):

* :class:`mmpipeline.retrieval.features.PairFeaturizer` (in the retrieval package shared with scoring) -- ``from_lake(lake, cfg)`` and
  ``transform(queries, query_ids, product_ids) -> DataFrame`` (the model input);
* :func:`mmpipeline.rank.registry.load_ranker` -- ``load_ranker(cfg, alias)`` -> ``.predict(df)``,
  ``.name``, ``.version``, ``.run_id``.
"""
