"""The later stages in ``bench scale``: embed, build-training-data, train, score and publish.

Registered after ingest -> clean -> validate (:mod:`mmpipeline.bench.scale`), on the same scratch
lake, in this order. Each runs the real stage (``run(ctx)``) with these bench settings, applied to
the run's config before the first of them (:func:`prepare`):

* MLflow: a scratch sqlite store and artifact folder next to the scratch lake (never ``var/mlflow``);
* embed: text only (``embed.embed_images: false``: training the image tower is its own stage and
  benchmark), local engine, and -- because encoding hundreds of thousands of unique texts on a
  2-core machine takes hours -- the text encoder is wrapped in a process-wide cache keyed by the
  model spec and a sha256 of the exact text, so a text encoded at a smaller size is reused at the
  larger ones. The summary says how many texts the model really encoded (``really_encoded``) and
  how many came from the cache (``cache_hits``; the cache is kept in a file beside the sizes' scratch
  folders, as each stage runs in its own process); the stage itself (plan, hashing, merges) is timed
  in full. ``--param encode_budget=N`` caps the texts really encoded in the run: new texts beyond it
  get a stand-in, the vector of an encoded text picked by hash plus a small perturbation seeded by the
  hash (``reused_beyond_budget`` in the summary; those vectors belong to other titles, so at such sizes
  the figures are about time and memory, not quality);
* build-training-data: ``rank.data_engine`` from ``--param data_engine`` (default ``spark``: negatives
  and features per query partition on the executors; ``local`` for the one-process path);
* train: ``rank.epochs`` capped (``--param train_epochs``, default 2), the new version is the
  ``challenger``;
* evaluate: the promotion gate on the held-out queries with the score stage's retrieval over the
  whole catalog (rows = held-out queries); it may promote the challenger;
* score: the Spark engine (queries partitioned, state loaded once per Python worker), scoring with
  the challenger (``score.model_alias: challenger``: the bench does not run the promotion gate);
* publish: the publish gate and the served index; a refusal by the gate is recorded
  (``published: false`` and the reason), not raised, so the timing is kept.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# spec json -> {sha256(text): vector}: the text vectors encoded so far in this process (all sizes)
_TEXT_CACHE: dict[str, dict[str, np.ndarray]] = {}


class CachingTextEncoder:
    """Wraps a text encoder: ``encode`` asks the model only for texts it has not seen before.

    ``budget``: at most this many texts really encoded in this process (all sizes together). Once it
    is spent, a new text gets a stand-in: the vector of an encoded text picked by the new text's
    hash, plus a small perturbation seeded by that hash (the same text always gets the same vector).
    The perturbation keeps the vectors distinct: with exact copies an approximate index's recall
    against exact search is meaningless (ties among identical vectors are broken differently) and its
    tuning runs away. Stand-ins are not stored, so the cache stays at ``budget`` vectors. They belong
    to other titles: timings and memory of the later stages stay real, their retrieval quality does
    not. ``encoded``: texts really encoded; ``hits``: texts answered from the cache; ``reused``:
    stand-in vectors handed out."""

    JITTER = 0.1  # perturbation norm relative to the vector's

    def __init__(self, inner: Any, namespace: str, budget: int | None = None):
        self.inner = inner
        self.cache = _TEXT_CACHE.setdefault(namespace, {})
        self.budget = budget
        self.encoded = 0
        self.hits = 0
        self.reused = 0
        self._pool: list[str] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _stand_in(self, key: str) -> np.ndarray:
        if self._pool is None:
            self._pool = sorted(self.cache)
        src = self.cache[self._pool[int(key[:12], 16) % len(self._pool)]]
        rng = np.random.default_rng(int(key[12:28], 16))
        noise = rng.standard_normal(src.shape).astype(np.float32)
        noise *= self.JITTER * float(np.linalg.norm(src)) / max(float(np.linalg.norm(noise)), 1e-12)
        return src + noise

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        keys = [hashlib.sha256(str(t).encode("utf-8")).hexdigest() for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if self.budget is not None and len(self.cache) + len(todo) > self.budget:
            room = max(0, self.budget - len(self.cache))
            if room == 0 and not self.cache:
                room = 1  # something to stand in from
            todo = todo[:room]
        if todo:
            first = {k: t for k, t in zip(keys, texts) if k in set(todo)}
            vecs = np.asarray(self.inner.encode([first[k] for k in todo], **kw), dtype=np.float32)
            for k, v in zip(todo, vecs):
                self.cache[k] = v
            self._pool = None
        self.encoded += len(todo)
        if not keys:
            return np.zeros((0, 0), np.float32)
        out = np.empty((len(keys), len(next(iter(self.cache.values())))), np.float32)
        served = 0
        for i, k in enumerate(keys):
            v = self.cache.get(k)
            if v is None:
                v = self._stand_in(k)
                self.reused += 1
            else:
                served += 1
            out[i] = v
        self.hits += served - len(todo)
        return out


def load_text_cache(path: str | Path) -> None:
    """Fill the process-wide text cache from ``path`` (written by :func:`save_text_cache`), so a stage
    process of a later size reuses what an earlier one encoded (``bench scale`` runs each stage in its
    own process). Namespaces already in memory are kept as they are."""
    import pickle

    path = Path(path)
    if not path.is_file():
        return
    with path.open("rb") as f:
        saved = pickle.load(f)
    for ns, (keys, mat) in saved.items():
        if ns not in _TEXT_CACHE:
            _TEXT_CACHE[ns] = dict(zip(keys, mat))


def save_text_cache(path: str | Path) -> None:
    """Write the process-wide text cache (each namespace as its keys and one float32 matrix)."""
    import pickle

    out = {ns: (list(c), np.stack(list(c.values())).astype(np.float32) if c else np.zeros((0, 0), np.float32))
           for ns, c in _TEXT_CACHE.items()}
    tmp = Path(str(path) + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def prepare(ctx) -> None:
    """Bench settings for the later stages (idempotent; see the module docstring)."""
    cfg = ctx.cfg
    if ctx.options.get("_later_stages_ready"):
        return
    work = Path(cfg.lake.root).parent
    cfg.mlflow.tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    cfg.mlflow.registry_uri = None
    cfg.mlflow.artifact_root = str(work / "mlflow-artifacts")
    cfg.mlflow.experiment = "bench-scale"
    cfg.embed.embed_images = False
    cfg.embed.engine = "local"
    cfg.embed.progress = False
    cfg.rank.epochs = int(ctx.options.get("train_epochs", 2))
    cfg.rank.data_engine = str(ctx.options.get("data_engine", "spark"))
    cfg.score.engine = "spark"
    cfg.score.model_alias = "challenger"
    ctx.options["_later_stages_ready"] = True


def embed(ctx) -> dict[str, Any]:
    from mmpipeline.embed import job

    prepare(ctx)
    made: list[CachingTextEncoder] = []
    real_build = job.build_encoder

    def build(spec):
        enc = real_build(spec)
        if getattr(spec, "modality", "text") == "image":
            return enc
        budget = ctx.options.get("encode_budget")
        made.append(CachingTextEncoder(enc, spec.to_json(), int(budget) if budget is not None else None))
        return made[-1]

    cache_file = ctx.options.get("text_cache_file")
    if cache_file:
        load_text_cache(cache_file)
    job.build_encoder = build
    try:
        out = job.run(ctx) or {}
    finally:
        job.build_encoder = real_build
    if cache_file and any(e.encoded for e in made):
        save_text_cache(cache_file)
    out["really_encoded"] = sum(e.encoded for e in made)
    out["cache_hits"] = sum(e.hits for e in made)
    if ctx.options.get("encode_budget") is not None:
        out["encode_budget"] = int(ctx.options["encode_budget"])
        out["reused_beyond_budget"] = sum(e.reused for e in made)  # vectors of other titles (see CachingTextEncoder)
    return out


def build_training_data(ctx) -> dict[str, Any]:
    from mmpipeline.rank import data

    prepare(ctx)
    return data.run(ctx)


def train(ctx) -> dict[str, Any]:
    from mmpipeline.rank import train as rtrain

    prepare(ctx)
    return rtrain.run(ctx)


def evaluate(ctx) -> dict[str, Any]:
    from mmpipeline.rank import evaluate as revaluate

    prepare(ctx)
    return revaluate.run(ctx)


def score(ctx) -> dict[str, Any]:
    from mmpipeline.score import job

    prepare(ctx)
    ctx.options["engine"] = "spark"
    out = job.run(ctx)
    out["indexes"] = retrieval_indexes(ctx)
    return out


def retrieval_indexes(ctx) -> list[dict[str, Any]]:
    """The night's candidate indexes as ``ops.retrieval_indexes`` recorded them (kind, size, measured
    recall@k against exact search, build seconds)."""
    from mmpipeline.retrieval.ann import OPS_TABLE

    if not ctx.lake.exists(OPS_TABLE):
        return []
    df = ctx.lake.read_pandas(OPS_TABLE, filters=[("run_date", "=", ctx.run_date)])
    cols = ["modality", "kind", "params", "vectors", "recall", "recall_k", "tune_queries", "build_seconds"]
    return [{k: (None if v != v else v) for k, v in row.items()} for row in df[cols].to_dict("records")]


def publish(ctx) -> dict[str, Any]:
    from mmpipeline.context import StageError
    from mmpipeline.score import publish as pub

    prepare(ctx)
    try:
        return pub.run(ctx)
    except StageError as e:
        log.warning("bench scale: publish refused: %s", str(e).splitlines()[0])
        return {"published": False, "refused": str(e).splitlines()[0][:500]}


def _embedded(s: dict[str, Any], c: dict[str, Any]) -> int:
    return int(c["products"] + c["queries"])


# (name, "module:function", rows) in order; bench/scale.py registers them after validate
LATER_STAGES = [
    ("embed", "mmpipeline.bench.scale_stages:embed", _embedded),
    ("build-training-data", "mmpipeline.bench.scale_stages:build_training_data", lambda s, c: int(s.get("rows") or 0)),
    ("train", "mmpipeline.bench.scale_stages:train", lambda s, c: int(s.get("train_pairs") or 0)),
    ("evaluate", "mmpipeline.bench.scale_stages:evaluate", lambda s, c: int(s.get("queries") or 0)),
    ("score", "mmpipeline.bench.scale_stages:score", lambda s, c: int(s.get("candidate_pairs") or 0)),
    ("publish", "mmpipeline.bench.scale_stages:publish", lambda s, c: int(s.get("rows") or 0)),
]
