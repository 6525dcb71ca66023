"""Which embedding model's vectors retrieval and ranking use, and reading them from the gold tables.

:func:`pick_model` is the ONE rule (training, evaluation and scoring all go through it): the
configured model (``rank.text_model_name`` / ``rank.image_model_name``) when set, else the model
with the most vectors of that modality, ties broken by the latest ``embedded_at``, then by name.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from mmpipeline.context import StageError
from mmpipeline.retrieval.dense import Vectors

log = logging.getLogger(__name__)


class ModelNotFound(StageError, ValueError):
    """The configured embedding model has no vectors of that modality."""


def model_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per model_name: vector count ``n`` and latest ``embedded_at`` (``last``; NaT without the column)."""
    if not len(df):
        return pd.DataFrame({"model_name": pd.Series(dtype=object), "n": pd.Series(dtype="int64"),
                             "last": pd.Series(dtype="datetime64[ns, UTC]")})
    last = (pd.to_datetime(df["embedded_at"], utc=True) if "embedded_at" in df.columns
            else pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]"))
    g = pd.DataFrame({"model_name": df["model_name"].astype(str), "last": last}).groupby("model_name")
    return pd.DataFrame({"n": g.size(), "last": g["last"].max()}).reset_index()


def pick_model(models: pd.DataFrame, preferred: str | None, what: str = "vectors") -> str | None:
    """The model to use from ``models`` (model_name, n, last -- see :func:`model_stats`): ``preferred``
    when given (:class:`ModelNotFound` if it has no vectors), else the most vectors, then the latest
    ``last``, then the smallest name. None when there are no vectors at all."""
    if not len(models):
        return None
    names = [str(n) for n in models["model_name"]]
    if preferred:
        if preferred not in names:
            raise ModelNotFound(f"no {what} from model {preferred!r}; have {sorted(names)}")
        return preferred
    m = models.assign(model_name=names, _last=pd.to_datetime(models["last"], utc=True)
                      .fillna(pd.Timestamp.min.tz_localize("UTC")))
    best = m.sort_values(["n", "_last", "model_name"], ascending=[False, False, True], kind="stable").iloc[0]
    return str(best["model_name"])


def vector_blocks(lake, table: str, id_col: str, modality: str, model_name: str, version: int | None = None,
                  as_of: Any = None):
    """(ids, float32 [rows, dim] view of the batch) per Parquet record batch of one modality and model
    of a gold embeddings table: non-null vectors, with ``run_date <= as_of`` when given. No Python
    object per vector and never the whole table in memory; mixed dimensions are an error."""
    import pyarrow as pa
    import pyarrow.compute as pc

    day = pa.scalar(pd.Timestamp(as_of).date(), pa.date32()) if as_of is not None else None
    dims: set[int] = set()
    cols = [id_col, "vector"] + (["run_date"] if day is not None else [])
    for t in lake.iter_arrow(table, version=version, columns=cols,
                             filters=[("modality", "=", modality), ("model_name", "=", model_name)]):
        keep = pc.invert(pc.is_null(t.column("vector")))
        if day is not None:
            keep = pc.and_(keep, pc.less_equal(pc.cast(t.column("run_date"), pa.date32()), day))
        t = t.filter(pc.fill_null(keep, False))
        if not t.num_rows:
            continue
        vec = t.column("vector").combine_chunks()
        lengths = pc.list_value_length(vec).to_numpy(zero_copy_only=False)
        dims.update(np.unique(lengths).tolist())
        if len(dims) != 1:
            raise StageError(f"{table}: {modality} vectors of model {model_name} have mixed dimensions {sorted(dims)}")
        flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        yield [str(i) for i in t.column(id_col).to_pylist()], flat.reshape(t.num_rows, int(lengths[0]))


def load_vectors(lake, table: str, id_col: str, modality: str, preferred: str | None = None,
                 model_name: str | None = None) -> Vectors:
    """Vectors of one modality and one model from a gold embeddings table (sorted by id)."""
    if not lake.exists(table):
        return Vectors.empty()
    filt: list[Any] = [("modality", "=", modality)]
    if model_name is None:
        meta = lake.read_arrow(table, columns=["model_name", "embedded_at"], filters=filt).to_pandas()
        models = model_stats(meta)
        model_name = pick_model(models, preferred, f"{table} {modality} vectors")
        if model_name is None:
            return Vectors.empty()
        if len(models) > 1:
            log.info("%s %s: models %s; using %s", table, modality, list(models["model_name"]), model_name)
    # record batches -> float32 blocks (each Arrow batch dropped once copied), then one matrix in id order
    # filled block by block: about two copies of the vectors at the peak instead of four (the Arrow table,
    # its sorted copy, the flattened array and the matrix: 6 GB for 1M x 384 on the score driver)
    ids_parts: list[np.ndarray] = []
    blocks: list[np.ndarray] = []
    for ids, block in vector_blocks(lake, table, id_col, modality, model_name):
        ids_parts.append(np.asarray(ids, dtype=object))
        blocks.append(block.copy())
    if not blocks:
        return Vectors(np.array([], dtype=object), np.zeros((0, 0), np.float32), model_name)
    all_ids = np.concatenate(ids_parts)
    order = np.argsort(all_ids, kind="stable")
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))  # sorted position of each row as read
    mat = np.empty((len(all_ids), blocks[0].shape[1]), np.float32)
    start = 0
    blocks.reverse()
    while blocks:  # each block freed as soon as it is placed
        b = blocks.pop()
        mat[where[start:start + len(b)]] = b
        start += len(b)
    return Vectors(all_ids[order], mat, model_name)
