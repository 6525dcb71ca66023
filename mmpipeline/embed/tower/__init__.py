"""The image tower: a torchvision CNN + projection into the text-embedding space.

* :mod:`mmpipeline.embed.tower.model` -- the ``nn.Module``, save/load of its folder (inference;
  what the embed stage loads).
* :mod:`mmpipeline.embed.tower.train` -- ``mmpipeline run train-image-tower`` (training; never
  imported by inference code).

This ``__init__`` imports neither, so loading the model never pulls in the training code.
"""
