"""Embedding: encoders (text, image), the image tower, and the incremental embed stage.

Modules, lowest layer first; each imports only modules above it in this list (a test,
tests/unit/test_import_graph.py, checks the whole package for cycles):

* :mod:`mmpipeline.embed.runtime`     -- devices, dtypes, autocast.
* :mod:`mmpipeline.embed.imageio`     -- image decode/transform, the DataLoader.
* :mod:`mmpipeline.embed.backbones`   -- torchvision backbones without their classifier.
* :mod:`mmpipeline.embed.data`        -- inputs, content hashes, the incremental plan (pure).
* :mod:`mmpipeline.embed.tower.model` -- the image tower's ``nn.Module`` and its saved folder.
* :mod:`mmpipeline.embed.encoders`    -- specs, fingerprints, text and image encoders, the factory.
* :mod:`mmpipeline.embed.registry`    -- the image tower in the MLflow registry.
* :mod:`mmpipeline.embed.models`      -- which models the config asks for, as encoder specs.
* :mod:`mmpipeline.embed.sink`        -- new vectors + deletions in one Delta merge commit.
* :mod:`mmpipeline.embed.spark_engine` -- the stage on Spark executors (read, plan, encode, write).
* :mod:`mmpipeline.embed.job`         -- ``mmpipeline run embed`` (never trains).
* :mod:`mmpipeline.embed.tower.train` -- ``mmpipeline run train-image-tower`` (training; nothing on
  the inference side imports it).
"""
