"""Image input: decode files into normalised tensors, in DataLoader worker processes.

Decoding never raises: a file that cannot be read gives a zero tensor and an error string, so one
bad file cannot stop a batch. Imports nothing from :mod:`mmpipeline.embed`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def prefetched_batches(paths: Sequence[str | None], transform: ImageTransform, batch_size: int,
                       max_pixels: int = 40_000_000):
    """Batches ``(indices, tensor, errors)`` decoded one batch ahead in a background thread, so
    decoding the next batch overlaps encoding the current one (PIL releases the GIL while it
    decodes). For places where DataLoader worker processes cannot be forked (Spark Python workers)."""
    from concurrent.futures import ThreadPoolExecutor

    ds = ImageFileDataset(paths, transform, max_pixels)
    n, bs = len(ds), max(1, batch_size)

    def load(start: int):
        return _collate([ds[k] for k in range(start, min(start + bs, n))])

    if not n:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        nxt = pool.submit(load, 0)
        for start in range(0, n, bs):
            cur = nxt.result()
            if start + bs < n:
                nxt = pool.submit(load, start + bs)
            yield cur
