"""Training the fusion ranker (``mmpipeline run train``).

``fit`` is the pure part: per-query lists (padded) in, a trained :class:`FusionRanker` and its
per-epoch history out, with fixed seeds and early stopping on validation NDCG@k. ``run`` is the
stage: reads ``gold.training_data`` for the run date, joins the query/product vectors from the gold
embedding tables at the versions recorded with the training data, trains, and records everything in
one MLflow run (parameters, per-epoch metrics, learning-curve and score-distribution plots, the
training table's Delta version as the run's input dataset, the model with signature and input
example), then registers the model and points the ``challenger`` alias at the new version.

Train is a transaction in the model registry, keyed by the run date and a fingerprint of the
training configuration and the training rows (:func:`train_key`): a retry or re-run of a date whose
model is already registered reuses that version (and re-points ``challenger`` at it) instead of
registering a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mmpipeline.retrieval.features import SCALAR_FEATURES, PairFeaturizer
from mmpipeline.rank.losses import NEG, get_loss
from mmpipeline.rank.metrics import mean_list_ndcg
from mmpipeline.rank.fusion import FusionConfig, FusionRanker, build_ranker
from mmpipeline.rank.model import resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config, RankConfig
    from mmpipeline.context import RunContext

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class ListData:
    """Training pairs grouped per query, with vectors gathered lazily from the featurizer."""

    q_vec: np.ndarray  # [n_queries, dim], one row per distinct query
    q_index: np.ndarray  # [n] row of q_vec per pair
    p_row: np.ndarray  # [n] catalog row per pair
    scalars: np.ndarray  # [n, S]
    labels: np.ndarray  # [n] in [0, 1]
    grades: np.ndarray  # [n] raw grade (nan for sampled negatives)
    groups: list[np.ndarray]  # pair indices per query
    query_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, featurizer: PairFeaturizer, idx: np.ndarray) -> dict[str, np.ndarray]:
        r = self.p_row[idx]
        return {"q_text": self.q_vec[self.q_index[idx]], "p_text": featurizer.p_text[r],
                "p_image": featurizer.p_image[r], "scalars": self.scalars[idx]}


def subset_lists(data: ListData, group_idx: np.ndarray) -> ListData:
    """The lists of the given query groups (re-indexed)."""
    rows = np.concatenate([data.groups[i] for i in group_idx]) if len(group_idx) else np.zeros(0, np.int64)
    bounds = np.cumsum([len(data.groups[i]) for i in group_idx])[:-1]
    groups = np.split(np.arange(len(rows)), bounds) if len(rows) else []
    return ListData(q_vec=data.q_vec, q_index=data.q_index[rows], p_row=data.p_row[rows], scalars=data.scalars[rows],
                    labels=data.labels[rows], grades=data.grades[rows], groups=groups,
                    query_ids=[data.query_ids[i] for i in group_idx])


def make_lists(df: pd.DataFrame, featurizer: PairFeaturizer) -> ListData:
    """Rows of ``gold.training_data`` (one split) -> :class:`ListData`. Pairs whose product is not
    in the featurizer's catalog are dropped."""
    rows = featurizer.product_rows(df["product_id"].tolist())
    df = df.loc[rows >= 0].reset_index(drop=True)
    rows = rows[rows >= 0]
    qdf = df[["query_id", "query_norm"]].drop_duplicates("query_id").reset_index(drop=True)
    q_vec, _ = featurizer.query_matrix(qdf["query_norm"].tolist(), qdf["query_id"].tolist())
    qpos = {q: i for i, q in enumerate(qdf["query_id"])}
    q_index = df["query_id"].map(qpos).to_numpy(dtype=np.int64)
    order = np.argsort(q_index, kind="stable")
    bounds = np.flatnonzero(np.diff(q_index[order])) + 1
    groups = [g for g in np.split(order, bounds) if len(g)]
    return ListData(
        q_vec=q_vec, q_index=q_index, p_row=rows,
        scalars=featurizer.stored_scalars(df),
        labels=df["label"].to_numpy(dtype=np.float32),
        grades=pd.to_numeric(df["grade"], errors="coerce").to_numpy(dtype=np.float64),
        groups=groups, query_ids=[str(qdf["query_id"][q_index[g[0]]]) for g in groups])


def predict_lists(model: FusionRanker, featurizer: PairFeaturizer, data: ListData, batch_size: int = 8192,
                  device: torch.device | str = "cpu") -> np.ndarray:
    out = np.empty(len(data), dtype=np.float64)
    for s in range(0, len(data), batch_size):
        idx = np.arange(s, min(s + batch_size, len(data)))
        out[idx] = model.score_arrays(data.gather(featurizer, idx), batch_size, device)
    return out


def grade_head_rmse(model: FusionRanker, featurizer: PairFeaturizer, data: ListData, batch_size: int = 8192,
                    device: torch.device | str = "cpu") -> float:
    """RMSE of the grade head's raw prediction against the normalised grade on the judged pairs of ``data``."""
    idx = np.flatnonzero(np.isfinite(data.grades))
    if not len(idx):
        return float("nan")
    pred = np.concatenate([model.grade_arrays(data.gather(featurizer, idx[s:s + batch_size]), batch_size, device)
                           for s in range(0, len(idx), batch_size)])
    return float(np.sqrt(np.mean((pred - data.labels[idx]) ** 2)))


def selection_metric(rec: dict[str, float], rc: "RankConfig") -> float:
    """What early stopping maximises for an epoch record: validation NDCG@k (minus the training loss
    without a validation split), minus ``rank.grade_weight`` x the grade head's validation RMSE."""
    metric = rec.get(f"valid_ndcg_at_{rc.eval_k}", -rec["train_loss"])
    if "valid_grade_rmse" in rec and np.isfinite(rec["valid_grade_rmse"]):
        metric -= rc.grade_weight * rec["valid_grade_rmse"]
    return metric


def fit(featurizer: PairFeaturizer, train: ListData, valid: ListData | None, rc: "RankConfig",
        fusion: str | None = None, loss: str | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> tuple[FusionRanker, list[dict[str, float]]]:
    """Train one model; returns the best (by validation NDCG@k; with a grade head, NDCG@k minus
    ``rank.grade_weight`` x the head's validation RMSE) model and the per-epoch history."""
    set_seed(rc.seed)
    device = resolve_device(rc.device)
    model = build_ranker(FusionConfig.for_features(featurizer.dim, featurizer.active_features(),
                                                   fusion=fusion or rc.fusion, hidden_dim=rc.hidden_dim,
                                                   dropout=rc.dropout, use_vectors=rc.use_vectors,
                                                   grade_head=rc.grade_weight > 0,
                                                   scalar_transform=rc.scalar_transform,
                                                   ple_bins=rc.ple_bins, input_noise=rc.input_noise,
                                                   bilinear_rank=rc.bilinear_rank))
    model.fit_scaler(train.scalars)
    model.to(device)
    loss_fn = get_loss(loss or rc.loss, rc.pointwise, rc.listwise_temperature)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    rng = np.random.default_rng(rc.seed)
    groups = [g for g in train.groups if len(g) > 1]
    history: list[dict[str, float]] = []
    best, best_state, bad = -float("inf"), None, 0
    monitor = subset_lists(train, rng.permutation(len(train.groups))[:200]) if train.groups else None
    for epoch in range(1, rc.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = rng.permutation(len(groups))
        total, nb = 0.0, 0
        for s in range(0, len(perm), rc.batch_queries):
            lists = []
            for gi in perm[s:s + rc.batch_queries]:
                g = groups[gi]
                if len(g) > rc.max_list_size:  # keep every positive that fits, sample the rest
                    pos = g[train.labels[g] > 0]
                    neg = g[train.labels[g] <= 0]
                    pos = rng.permutation(pos)[:max(1, rc.max_list_size // 2)]
                    neg = rng.permutation(neg)[:rc.max_list_size - len(pos)]
                    g = np.concatenate([pos, neg])
                lists.append(g)
            L = max(len(g) for g in lists)
            idx = np.full((len(lists), L), -1, dtype=np.int64)
            for i, g in enumerate(lists):
                idx[i, :len(g)] = g
            mask_np = idx >= 0
            flat = idx[mask_np]
            b = {k: torch.as_tensor(v, device=device) for k, v in train.gather(featurizer, flat).items()}
            scores_flat, grades_flat = model.score_and_grade(b["q_text"], b["p_text"], b["p_image"], b["scalars"])
            mask = torch.as_tensor(mask_np, device=device)
            scores = torch.full(mask.shape, NEG, device=device, dtype=scores_flat.dtype).masked_scatter(mask, scores_flat)
            labels = torch.zeros(mask.shape, device=device).masked_scatter(
                mask, torch.as_tensor(train.labels[flat], device=device))
            loss_v = loss_fn(scores, labels, mask)
            if grades_flat is not None:  # the grade head: MSE on the judged pairs' normalised grade
                judged = torch.as_tensor(np.isfinite(train.grades[flat]), device=device)
                if bool(judged.any()):
                    target = torch.as_tensor(train.labels[flat], device=device, dtype=grades_flat.dtype)
                    loss_v = loss_v + rc.grade_weight * F.mse_loss(grades_flat[judged], target[judged])
            opt.zero_grad()
            loss_v.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += float(loss_v.detach())
            nb += 1
        rec = {"epoch": epoch, "train_loss": total / max(nb, 1), "seconds": time.perf_counter() - t0}
        if valid is not None and len(valid):
            vs = predict_lists(model, featurizer, valid, rc.score_batch_size, device)
            rec[f"valid_ndcg_at_{rc.eval_k}"] = mean_list_ndcg(vs, valid.labels, valid.groups, rc.eval_k)
        if valid is not None and len(valid) and model.has_grade_head:
            rec["valid_grade_rmse"] = grade_head_rmse(model, featurizer, valid, rc.score_batch_size, device)
        if monitor is not None:  # training NDCG on a fixed sample of queries (learning curves)
            ts = predict_lists(model, featurizer, monitor, rc.score_batch_size, device)
            rec[f"train_ndcg_at_{rc.eval_k}"] = mean_list_ndcg(ts, monitor.labels, monitor.groups, rc.eval_k)
        history.append(rec)
        if on_epoch:
            on_epoch(epoch, rec)
        metric = selection_metric(rec, rc)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "epoch"))
        if metric > best + 1e-5:
            best, bad = metric, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= rc.patience:
                log.info("early stopping after epoch %d (best valid %s %.4f)", epoch,
                         "NDCG - grade_weight x grade RMSE" if model.has_grade_head else "NDCG", best)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model.cpu(), history


# ------------------------------------------------------------------------------------ plots


def plot_learning_curves(history: list[dict[str, float]], path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], marker="o")
    ax[0].set(title="training loss", xlabel="epoch")
    for key, lab in ((f"train_ndcg_at_{k}", "train"), (f"valid_ndcg_at_{k}", "valid")):
        if any(key in h for h in history):
            ax[1].plot(ep, [h.get(key, np.nan) for h in history], marker="o", label=lab)
    ax[1].set(title=f"NDCG@{k} within judged lists", xlabel="epoch")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_score_by_grade(scores: np.ndarray, grades: np.ndarray, sources: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, data = [], []
    neg = ~np.isfinite(grades)
    if neg.any():
        keys.append("sampled\nnegatives")
        data.append(scores[neg])
    for g in sorted(np.unique(np.round(grades[~neg], 1))):
        sel = (~neg) & (np.round(grades, 1) == g)
        keys.append(f"grade {g:g}")
        data.append(scores[sel])
    fig, ax = plt.subplots(figsize=(max(5, len(keys) * 0.8), 4))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(keys) + 1), keys, rotation=45, fontsize=8)
    ax.set(title="validation score distribution per grade", ylabel="model score")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------ stage


def read_training_data(ctx: "RunContext") -> tuple[pd.DataFrame, int, dict[str, Any]]:
    """The training-data partition of the run date (or the latest one before it) as one frame, the
    table version and the commit metadata recorded by the builder (input table versions). Train
    streams the same rows instead (:class:`TrainingRowBatches`)."""
    version, use, meta = training_partition(ctx)
    # only the chosen night's partition (files pruned by run_date), not the table's whole history
    df = ctx.lake.read_pandas("gold.training_data", version=version, filters=[("run_date", "=", use)])
    # the builder's row order whatever wrote the files (the Spark engine's files come in task order)
    df = df.sort_values(ROW_ORDER, kind="stable").reset_index(drop=True)
    return df, version, meta


ROW_ORDER = ["split", "query_id", "source", "product_id"]  # the builder's order (rank.data.ROW_ORDER)


def training_partition(ctx: "RunContext") -> tuple[int, Any, dict[str, Any]]:
    """(table version, the partition's run date, commit metadata) of the night
    :func:`read_training_data` would read, without reading its rows."""
    from mmpipeline.context import StageError

    lake = ctx.lake
    name = "gold.training_data"
    if not lake.exists(name):
        raise StageError(f"{name} does not exist: run 'mmpipeline run build-training-data' first")
    version = lake.version(name)
    dates = lake.read_arrow(name, version=version, columns=["run_date"]).column("run_date").unique().to_pylist()
    if not dates:
        raise StageError(f"{name} is empty")
    known = sorted(d for d in (pd.Timestamp(x).date() for x in dates) if d <= ctx.run_date)
    if not known:
        raise StageError(f"{name} has no partition on or before {ctx.run_date}")
    use = known[-1]
    meta: dict[str, Any] = {"training_run_date": str(use)}
    for h in lake.history(name):  # commit metadata in one shape for both engines (Lake.history)
        m = h.get("metadata") or {}
        if m.get("mmp_run_date") == str(use) and "mmp_input_versions" in m:
            iv = m["mmp_input_versions"]
            meta["input_versions"] = json.loads(iv) if isinstance(iv, str) else iv
            break
    return version, use, meta


class TrainingRowBatches(torch.utils.data.IterableDataset):
    """One night's ``gold.training_data`` rows as a stream of pandas frames of at most ``batch_rows``
    rows: the partition's files (pruned by ``run_date`` through the deltalake dataset), read record
    batch by record batch. Memory holds one batch of rows, whatever the night's size."""

    def __init__(self, uri: str, version: int, run_date: Any, batch_rows: int = 65_536,
                 columns: list[str] | None = None):
        super().__init__()
        self.uri, self.version, self.run_date = uri, version, pd.Timestamp(run_date).date()
        self.batch_rows, self.columns = int(batch_rows), columns

    def __iter__(self):
        import pyarrow as pa
        import pyarrow.dataset as pads
        from deltalake import DeltaTable

        from mmpipeline.lake import _plain_strings

        ds = DeltaTable(self.uri, version=self.version).to_pyarrow_dataset()
        expr = pads.field("run_date") == pa.scalar(self.run_date, pa.date32())
        frags = list(ds.get_fragments(filter=expr))  # only this night's partition files
        if not frags:
            return
        pruned = pads.FileSystemDataset(frags, ds.schema, ds.format, ds.filesystem)
        for batch in pruned.to_batches(columns=self.columns, batch_size=self.batch_rows):
            if batch.num_rows:
                yield _plain_strings(pa.Table.from_batches([batch])).to_pandas()


@dataclass
class StreamedLists:
    """What :func:`stream_lists` gathers from the stream: the lists per split, the fingerprint of the
    rows, the row counts and the first rows (in the builder's order) of each split for the model's
    input example."""

    lists: dict[str, ListData]
    rows_digest: str
    rows: int
    head: dict[str, pd.DataFrame]


def stream_lists(batches: Any, featurizer: PairFeaturizer, splits: tuple[str, ...] = ("train", "valid"),
                 head_rows: int = 5) -> StreamedLists:
    """Training rows (an iterable of frames, e.g. :class:`TrainingRowBatches`) -> :class:`ListData`
    per split, equal to :func:`make_lists` of the split's rows in the builder's order, without ever
    holding the rows as one frame: each batch leaves compact numbers (query code, catalog row,
    scalars, label, grade) and one 64-bit hash per row (the order-independent rows digest)."""
    acc: dict[str, dict[str, list]] = {s: {k: [] for k in ("q", "src", "row", "sc", "lab", "gr")} for s in splits}
    q_code: dict[str, int] = {}
    q_norm: list[str] = []
    src_code: dict[str, int] = {}
    hashes: list[np.ndarray] = []
    n = 0
    for df in batches:
        if not len(df):
            continue
        n += len(df)
        hashes.append(_row_hashes(df))
        rows = featurizer.product_rows(df["product_id"].tolist())
        df = df.loc[rows >= 0].reset_index(drop=True)
        rows = rows[rows >= 0]
        for s in splits:
            sel = (df["split"] == s).to_numpy()
            if not sel.any():
                continue
            sub = df.loc[sel].reset_index(drop=True)
            qc = np.empty(len(sub), np.int64)
            for i, (qid, qn) in enumerate(zip(sub["query_id"].astype(str), sub["query_norm"])):
                c = q_code.get(qid)
                if c is None:
                    c = q_code[qid] = len(q_norm)
                    q_norm.append(qn)
                qc[i] = c
            a = acc[s]
            a["q"].append(qc)
            a["src"].append(np.array([src_code.setdefault(x, len(src_code)) for x in sub["source"]], np.int64))
            a["row"].append(rows[sel])
            a["sc"].append(featurizer.stored_scalars(sub))
            a["lab"].append(sub["label"].to_numpy(dtype=np.float32))
            a["gr"].append(pd.to_numeric(sub["grade"], errors="coerce").to_numpy(dtype=np.float64))
    qids = np.array(list(q_code), dtype=object)
    q_rank = np.empty(len(qids), np.int64)
    q_rank[np.argsort(qids.astype(str), kind="stable")] = np.arange(len(qids))
    srcs = sorted(src_code)
    src_rank = np.array([srcs.index(x) for x in src_code], np.int64)
    p_rank = np.empty(len(featurizer.ids), np.int64)
    p_rank[np.argsort(featurizer.ids.astype(str), kind="stable")] = np.arange(len(featurizer.ids))
    out: dict[str, ListData] = {}
    head: dict[str, pd.DataFrame] = {}
    for s in splits:
        a = acc[s]
        cat = {k: (np.concatenate(v) if v else None) for k, v in a.items()}
        if cat["q"] is None:
            out[s] = make_lists(pd.DataFrame(columns=["query_id", "query_norm", "product_id", "label", "grade"]),
                                featurizer)
            head[s] = pd.DataFrame(columns=["query_id", "query_norm", "product_id"])
            continue
        order = np.lexsort((p_rank[cat["row"]], src_rank[cat["src"]], q_rank[cat["q"]]))  # ROW_ORDER in the split
        qc, prow = cat["q"][order], cat["row"][order]
        uq, first = np.unique(q_rank[qc], return_index=True)  # queries in id order
        q_of = qc[first]
        q_vec, _ = featurizer.query_matrix([q_norm[c] for c in q_of], [str(qids[c]) for c in q_of])
        q_index = np.searchsorted(uq, q_rank[qc])
        bounds = np.flatnonzero(np.diff(q_index)) + 1
        groups = [g for g in np.split(np.arange(len(qc)), bounds) if len(g)]
        out[s] = ListData(q_vec=q_vec, q_index=q_index, p_row=prow, scalars=cat["sc"][order],
                          labels=cat["lab"][order], grades=cat["gr"][order], groups=groups,
                          query_ids=[str(qids[q_of[q_index[g[0]]]]) for g in groups])
        k = order[:head_rows]
        head[s] = pd.DataFrame({"query_id": [str(qids[c]) for c in cat["q"][k]],
                                "query_norm": [q_norm[c] for c in cat["q"][k]],
                                "product_id": featurizer.ids[cat["row"][k]].tolist()})
    return StreamedLists(out, _digest(hashes), n, head)


# rank.* settings that only matter to evaluation, gating or benchmarks: changing them does not retrain
_NOT_TRAINING = frozenset({"primary_metric", "promote_margin", "slice_tolerance", "recall_k", "candidates_k",
                           "relevant_min_label", "long_query_tokens", "max_eval_queries", "eval_batch_queries",
                           "bench_fusions", "colour_attribute", "score_batch_size", "device",
                           "bench_lambdamart", "lambdamart_rounds", "slice_regression_max", "slice_min_queries",
                           "gate_slices", "data_engine", "data_partitions", "min_gain_over_baselines"})
TRAIN_KEY_TAG = "mmp_train_key"


def _row_hashes(df: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per training row (columns in name order, objects as text)."""
    h = df[sorted(df.columns)]
    h = h.astype({c: str for c in h.columns if h[c].dtype == object})
    return pd.util.hash_pandas_object(h, index=False).to_numpy()


def _digest(hashes: list[np.ndarray]) -> str:
    """sha256 of the sorted row hashes (order-independent)."""
    return hashlib.sha256(np.sort(np.concatenate(hashes)).tobytes() if hashes else b"").hexdigest()


def streamed_digest(batches: Any) -> str:
    """The order-independent digest of a stream of training-row frames (what :func:`stream_lists`
    computes alongside the lists), from the rows alone."""
    return _digest([_row_hashes(df) for df in batches if len(df)])


def rows_digest(df: pd.DataFrame) -> str:
    """:func:`streamed_digest` of one frame of training rows."""
    return streamed_digest([df])


def config_fingerprint(rc: "RankConfig", rows: str | pd.DataFrame, featurizer_meta: dict[str, Any] | None = None) -> str:
    """sha256 (16 hex) of the training settings and the training rows' content (order-independent:
    ``rows`` is the rows' :func:`rows_digest`, or the rows themselves)."""
    settings = {k: v for k, v in rc.model_dump().items() if k not in _NOT_TRAINING}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update((rows if isinstance(rows, str) else rows_digest(rows)).encode())
    meta = {k: (featurizer_meta or {}).get(k) for k in ("text_model", "image_model")}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def train_key(run_date: Any, fingerprint: str) -> str:
    return f"{run_date}/{fingerprint}"


def find_trained_version(cfg: "Config", key: str):
    """The registered version an earlier train run for ``key`` produced (lowest number), or None.

    Matches the version tag, or the MLflow run tag when the process died before it tagged the version.
    """
    import mlflow

    from mmpipeline.rank.registry import client

    c = client(cfg)
    name = cfg.mlflow.model_name
    try:
        versions = c.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such registered model yet
        return None
    if not versions:
        return None
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    run_ids: set[str] = set()
    if exp is not None:
        runs = c.search_runs([exp.experiment_id], filter_string=f"tags.{TRAIN_KEY_TAG} = '{key}'", max_results=1000)
        run_ids = {r.info.run_id for r in runs}
    hits = [v for v in versions if (v.tags or {}).get(TRAIN_KEY_TAG) == key or v.run_id in run_ids]
    return min(hits, key=lambda v: int(v.version)) if hits else None


def _pinned_versions(meta: dict[str, Any]) -> dict[str, int]:
    """The input table versions the training data was built from (its commit metadata)."""
    return {k: v for k, v in (meta.get("input_versions") or {}).items()
            if k in ("silver.products", "gold.product_embeddings", "gold.query_embeddings") and v is not None}


def featurizer_for(ctx: "RunContext", meta: dict[str, Any]) -> PairFeaturizer:
    return PairFeaturizer.from_lake(ctx.lake, ctx.cfg, as_of=ctx.run_date, versions=_pinned_versions(meta))


def _reuse(ctx: "RunContext", mv, key: str, table_version: int) -> dict[str, Any]:
    """A retry / re-run of a date already trained: keep its version, make sure it is tagged and that
    ``challenger`` points at it (the earlier run may have died before either)."""
    from mmpipeline.rank.registry import client

    name = ctx.cfg.mlflow.model_name
    c = client(ctx.cfg)
    version = str(mv.version)
    if (mv.tags or {}).get(TRAIN_KEY_TAG) != key:
        c.set_model_version_tag(name, version, TRAIN_KEY_TAG, key)
        c.set_model_version_tag(name, version, "run_date", str(ctx.run_date))
    c.set_registered_model_alias(name, CHALLENGER, version)
    log.info("train: run %s with these settings and training rows is already registered as %s version %s "
             "(train key %s); reusing it as %s", ctx.run_date, name, version, key, CHALLENGER)
    print(f"train: {name} v{version} already trained for {ctx.run_date} with the same settings and data; reused")
    return {"model_name": name, "version": version, "alias": CHALLENGER, "mlflow_run_id": mv.run_id,
            "reused": True, "train_key": key, "training_table_version": table_version}


def log_and_register(ctx: "RunContext", model: FusionRanker, featurizer: PairFeaturizer, example: pd.DataFrame,
                     alias: str = CHALLENGER, tags: dict[str, str] | None = None):
    """Log the model as an MLflow pyfunc (signature + input example) in the active run, register it
    and point ``alias`` at the new version. Returns the model version."""
    import mlflow
    from mlflow.models import infer_signature

    from mmpipeline.rank.model import RankerPyfunc
    from mmpipeline.rank.registry import client

    with tempfile.TemporaryDirectory() as td:
        path = str(Path(td) / "fusion_ranker.pt")
        model.save(path)
        ex = example.copy()
        for c in ("q_text", "p_text", "p_image"):  # JSON round-trips floats as doubles
            ex[c] = [np.asarray(v, np.float64) for v in ex[c]]
        preds = model.score_arrays({"q_text": np.stack(example["q_text"]), "p_text": np.stack(example["p_text"]),
                                    "p_image": np.stack(example["p_image"]),
                                    "scalars": example[SCALAR_FEATURES].to_numpy(np.float32)})
        signature = infer_signature(ex, preds)
        import mlflow.pyfunc

        reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
        info = mlflow.pyfunc.log_model(name="model", python_model=RankerPyfunc(), artifacts={"model": path},
                                       signature=signature, input_example=ex, pip_requirements=reqs,
                                       registered_model_name=ctx.cfg.mlflow.model_name)
    c = client(ctx.cfg)
    version = str(info.registered_model_version)
    c.set_registered_model_alias(ctx.cfg.mlflow.model_name, alias, version)
    for k, v in (tags or {}).items():
        c.set_model_version_tag(ctx.cfg.mlflow.model_name, version, k, str(v))
    log.info("registered %s version %s with alias %s", ctx.cfg.mlflow.model_name, version, alias)
    return version


def run(ctx: "RunContext") -> dict[str, Any]:
    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    from mmpipeline.context import StageError
    from mmpipeline.ops import print_table
    from mmpipeline.rank.registry import setup_mlflow

    rc = ctx.cfg.rank
    table_version, night, meta = training_partition(ctx)
    setup_mlflow(ctx.cfg)
    # a retry / re-run of a date already trained is found from the rows and the vector models alone,
    # before the featuriser is built (minutes at 1M products)
    batches = TrainingRowBatches(ctx.lake.uri("gold.training_data"), table_version, night)
    digest = streamed_digest(batches)
    models = dict(zip(("text_model", "image_model"), PairFeaturizer.vector_models(
        ctx.lake, ctx.cfg, as_of=ctx.run_date, versions=_pinned_versions(meta))))
    key = train_key(ctx.run_date, config_fingerprint(rc, digest, models))
    done = find_trained_version(ctx.cfg, key)
    if done is not None:
        return _reuse(ctx, done, key, table_version)
    featurizer = featurizer_for(ctx, meta)
    # the night's rows streamed from the Delta partition into compact per-split lists (never one frame)
    got = stream_lists(batches, featurizer)
    train, valid = got.lists["train"], got.lists["valid"]
    if not len(train):
        raise StageError("no training queries in gold.training_data (check rank.split)")
    log.info("train: %d pairs / %d queries; valid: %d pairs / %d queries", len(train), len(train.groups),
             len(valid), len(valid.groups))
    k = rc.eval_k
    fingerprint = config_fingerprint(rc, got.rows_digest, featurizer.meta)
    if train_key(ctx.run_date, fingerprint) != key:  # the rows or the models changed under this run
        raise StageError(f"gold.training_data or the embeddings changed while train ran (key {key} -> "
                         f"{train_key(ctx.run_date, fingerprint)}); run train again")
    with mlflow.start_run(run_name=f"train-{ctx.run_date}-{rc.fusion}-{rc.loss}") as mrun:
        mlflow.set_tags({"stage": "train", "run_date": str(ctx.run_date), "fusion": rc.fusion, "loss": rc.loss,
                         TRAIN_KEY_TAG: key, "config_fingerprint": fingerprint})
        params = {f"rank.{k_}": v for k_, v in rc.model_dump().items() if not isinstance(v, (dict, list))}
        params.update({"rank.split": json.dumps(rc.split), "training_table": "gold.training_data",
                       "training_table_version": table_version, "training_run_date": meta["training_run_date"],
                       "text_model": featurizer.meta.get("text_model"), "image_model": featurizer.meta.get("image_model"),
                       "embedding_dim": featurizer.dim, "train_pairs": len(train), "train_queries": len(train.groups),
                       "valid_pairs": len(valid), "valid_queries": len(valid.groups), "device": str(resolve_device(rc.device))})
        for name, v in (featurizer.meta.get("versions") or {}).items():
            params[f"input_version.{name}"] = v
        mlflow.log_params(params)
        source = DeltaDatasetSource(path=ctx.lake.uri("gold.training_data"), delta_table_version=table_version)
        ds = MetaDataset(source=source, name=f"gold.training_data@v{table_version}/{meta['training_run_date']}",
                         digest=got.rows_digest[:8])  # the table version, not a copy of its rows
        mlflow.log_input(ds, context="training")

        def on_epoch(epoch: int, rec: dict[str, float]) -> None:
            mlflow.log_metrics({k_: v for k_, v in rec.items() if k_ != "epoch"}, step=epoch)

        t0 = time.perf_counter()
        model, history = fit(featurizer, train, valid, rc, on_epoch=on_epoch)
        train_seconds = time.perf_counter() - t0
        best_epoch = max(history, key=lambda h: selection_metric(h, rc))  # the epoch fit kept
        summary_metrics = {"best_epoch": best_epoch["epoch"], "epochs_run": len(history),
                           "train_seconds": train_seconds,
                           f"best_valid_ndcg_at_{k}": best_epoch.get(f"valid_ndcg_at_{k}", float("nan"))}
        if model.modality_weights():
            summary_metrics.update(model.modality_weights())
        mlflow.log_metrics(summary_metrics)
        with tempfile.TemporaryDirectory() as td:
            plot_learning_curves(history, Path(td) / "learning_curves.png", k)
            vs = predict_lists(model, featurizer, valid, rc.score_batch_size) if len(valid) else np.zeros(0)
            if len(valid):
                plot_score_by_grade(vs, valid.grades, np.array([]), Path(td) / "score_by_grade.png")
            pd.DataFrame(history).to_csv(Path(td) / "history.csv", index=False)
            mlflow.log_artifacts(td, artifact_path="plots")
        ex_rows = got.head["valid"] if len(got.head["valid"]) else got.head["train"]
        example = featurizer.transform(ex_rows["query_norm"].tolist(), ex_rows["query_id"].tolist(),
                                       ex_rows["product_id"].tolist())
        version = log_and_register(ctx, model, featurizer, example, CHALLENGER, tags={
            "run_date": str(ctx.run_date), "fusion": rc.fusion, "loss": rc.loss,
            f"best_valid_ndcg_at_{k}": f"{summary_metrics[f'best_valid_ndcg_at_{k}']:.4f}",
            "training_table_version": table_version, TRAIN_KEY_TAG: key})
        mlflow.set_tag("registered_version", version)
        run_id = mrun.info.run_id
    print_table(f"train: {ctx.cfg.mlflow.model_name} v{version} ({rc.fusion}, {rc.loss})",
                ["epoch", "train_loss", f"valid_ndcg@{k}", "seconds"],
                [[h["epoch"], h["train_loss"], h.get(f"valid_ndcg_at_{k}", float("nan")), h["seconds"]] for h in history])
    return {"model_name": ctx.cfg.mlflow.model_name, "version": version, "alias": CHALLENGER, "mlflow_run_id": run_id,
            "reused": False, "train_key": key, "train_pairs": len(train), "train_queries": len(train.groups), "valid_queries": len(valid.groups),
            "epochs_run": len(history), "best_epoch": best_epoch["epoch"],
            f"best_valid_ndcg_at_{k}": round(summary_metrics[f"best_valid_ndcg_at_{k}"], 4),
            "training_table_version": table_version, "seconds_training": round(train_seconds, 1)}
