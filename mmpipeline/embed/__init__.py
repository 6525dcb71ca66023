"""Embedding stage: encoders (text, image), the image tower, and the incremental embed job.

* :mod:`mmpipeline.embed.encoders` -- one interface over sentence-transformers, transformers, CLIP,
  torchvision backbones and the trained tower.
* :mod:`mmpipeline.embed.tower`    -- ``mmpipeline run train-image-tower``.
* :mod:`mmpipeline.embed.job`      -- ``mmpipeline run embed``.
* :mod:`mmpipeline.embed.data`     -- inputs, content hashes, the incremental plan (pure).
"""
