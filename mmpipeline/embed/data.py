"""Inputs of the embed stage as plain frames, content hashes, and the incremental plan (pure)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from mmpipeline.config import Config
    from mmpipeline.lake import Lake


# ------------------------------------------------------------------------------------ texts
def _clean(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return " ".join(str(v).split())


def build_text(row_values: Sequence[Any]) -> str:
    """Join the non-empty fields with '. ', whitespace collapsed, repeated fields dropped."""
    parts: list[str] = []
    for v in row_values:
        s = _clean(v)
        if s and s not in parts:
            parts.append(s)
    return ". ".join(parts)


def text_hash(text: str, max_length: int) -> str:
    """Content hash of exactly what the text encoder sees (text and truncation length)."""
    return hashlib.sha1(f"t{max_length}\x00{text}".encode()).hexdigest()


def image_hash(key: str, image_size: int) -> str:
    return hashlib.sha1(f"i{image_size}\x00{key}".encode()).hexdigest()


def _image_key(path: Any, content_hash: Any) -> str:
    """The image's content hash from silver when present, else path + size + mtime."""
    if isinstance(content_hash, str) and content_hash:
        return content_hash
    if not isinstance(path, str) or not path:
        return ""
    try:
        st = os.stat(path)
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path}:missing"


def load_products(lake: "Lake", cfg: "Config") -> pd.DataFrame:
    """``silver.products`` as (product_id, text, image_path, has_image, image_key), sorted by id."""
    fields = list(cfg.embed.product_text_fields)
    cols = ["product_id", *fields, "image_path", "image_status", "image_hash"]
    df = lake.read_pandas("silver.products", columns=list(dict.fromkeys(cols)))
    df = df.sort_values("product_id", kind="stable").reset_index(drop=True)
    if cfg.embed.max_products:
        df = df.head(cfg.embed.max_products).reset_index(drop=True)
    text = [build_text(vals) for vals in zip(*(df[f].tolist() for f in fields))] if len(df) else []
    has_image = (df["image_status"] == "ok") & df["image_path"].notna() & (df["image_path"].astype(str) != "")
    return pd.DataFrame({
        "product_id": df["product_id"].astype(str),
        "text": pd.Series(text, dtype=object),
        "image_path": df["image_path"].where(has_image, None),
        "has_image": has_image.to_numpy(bool),
        "image_key": [(_image_key(p, h) if ok else "") for p, h, ok in
                      zip(df["image_path"], df["image_hash"], has_image)],
    })


def load_queries(lake: "Lake", cfg: "Config") -> pd.DataFrame:
    """``silver.queries`` as (query_id, text), sorted by id; empty when the table is absent."""
    if not lake.exists("silver.queries"):
        return pd.DataFrame({"query_id": pd.Series(dtype=object), "text": pd.Series(dtype=object)})
    f = cfg.embed.query_text_field
    df = lake.read_pandas("silver.queries", columns=list(dict.fromkeys(["query_id", f, "query"])))
    text = [_clean(a) or _clean(b) for a, b in zip(df[f], df["query"])]
    out = pd.DataFrame({"query_id": df["query_id"].astype(str), "text": pd.Series(text, dtype=object)})
    return out.sort_values("query_id", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """What to do for one (entity, modality, model): ids to encode, ids whose stored vector is
    still valid, stored ids to delete (entity gone or content no longer embeddable), ids skipped
    because the same content already failed with the same model version."""

    encode: list[str] = field(default_factory=list)
    reuse: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    known_bad: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # why rows are encoded: new / changed / model / refresh

    def as_dict(self) -> dict[str, Any]:
        return {"encode": len(self.encode), "reuse": len(self.reuse), "delete": len(self.delete),
                "known_bad": len(self.known_bad), **{f"encode_{k}": v for k, v in self.reasons.items()}}


def plan_incremental(current: pd.DataFrame, existing: pd.DataFrame | None, model_version: str,
                     full_refresh: bool = False, failures: pd.DataFrame | None = None,
                     id_col: str = "id") -> Plan:
    """Pure incremental plan.

    ``current``: rows to embed now (``id_col``, ``content_hash``) -- only embeddable content.
    ``existing``: stored rows of the same model name and modality (``id_col``, ``content_hash``,
    ``model_version``). ``failures``: earlier failures (``id_col``, ``content_hash``,
    ``model_version``) that are not retried while content and model are unchanged.
    A row is encoded when it is new, its content hash changed, the model version changed, or on
    ``full_refresh``; stored rows whose id is no longer in ``current`` are deleted.
    """
    cur = current[[id_col, "content_hash"]].drop_duplicates(id_col)
    plan = Plan()
    ex = existing[[id_col, "content_hash", "model_version"]] if existing is not None and len(existing) else None
    if ex is not None:
        ex = ex.drop_duplicates(id_col)
        plan.delete = sorted(set(ex[id_col]) - set(cur[id_col]))
        m = cur.merge(ex, on=id_col, how="left", suffixes=("", "_old"))
    else:
        m = cur.assign(content_hash_old=None, model_version=None)
    new = m["content_hash_old"].isna().to_numpy()
    changed = ~new & (m["content_hash"] != m["content_hash_old"]).to_numpy()
    model = ~new & ~changed & (m["model_version"] != model_version).to_numpy()
    todo = np.ones(len(m), bool) if full_refresh else (new | changed | model)
    if failures is not None and len(failures) and not full_refresh:
        bad = failures[failures["model_version"] == model_version]
        bad_keys = set(zip(bad[id_col], bad["content_hash"]))
        is_bad = np.array([(i, h) in bad_keys for i, h in zip(m[id_col], m["content_hash"])], bool)
        plan.known_bad = m.loc[todo & is_bad, id_col].tolist()
        todo = todo & ~is_bad
    plan.encode = m.loc[todo, id_col].tolist()
    plan.reuse = m.loc[~todo & ~np.isin(m[id_col], plan.known_bad), id_col].tolist()
    if full_refresh:
        plan.reasons = {"refresh": int(todo.sum())}
    else:
        plan.reasons = {"new": int((todo & new).sum()), "changed": int((todo & changed).sum()),
                        "model": int((todo & model).sum())}
    return plan


# ------------------------------------------------------------------------------------ vectors
def stored_vectors(lake: "Lake", table_name: str, id_col: str, ids: Sequence[str], hashes: Sequence[str],
                   modality: str, model_name: str, model_version: str) -> np.ndarray | None:
    """Stored vectors for ``ids`` (NaN rows where none matches content hash and model), or None
    when the table or the model has no vectors."""
    import pyarrow.compute as pc

    if not lake.exists(table_name):
        return None
    t = lake.read_arrow(table_name, columns=[id_col, "content_hash", "model_version", "vector"],
                        filters=[("modality", "=", modality), ("model_name", "=", model_name)])
    t = t.filter(pc.equal(t["model_version"], model_version))
    if not t.num_rows:
        return None
    pos = {(i, h): k for k, (i, h) in enumerate(zip(t[id_col].to_pylist(), t["content_hash"].to_pylist()))}
    dim = len(t["vector"][0].as_py())
    flat = np.asarray(t["vector"].combine_chunks().flatten(), dtype=np.float32).reshape(-1, dim)
    out = np.full((len(ids), dim), np.nan, np.float32)
    for r, key in enumerate(zip(ids, hashes)):
        k = pos.get(key)
        if k is not None:
            out[r] = flat[k]
    return out
