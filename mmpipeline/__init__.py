"""mmpipeline: offline batch pipeline for multimodal e-commerce product search."""

__version__ = "0.1.0"
