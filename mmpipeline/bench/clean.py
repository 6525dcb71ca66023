"""``mmpipeline bench clean``: rows/s of the clean stage's product cleaning on Spark vs plain pandas.

The catalog is scaled up from the Home Depot sample (``params.rows``, default 1,000,000): every
product title is replicated with new ids, HTML/entity junk on some titles, price strings in several
formats and currencies (a few unparseable or negative), and ~2% repeated ids with newer records, so
every cleaning step does real work. Both implementations run in the same process on the same
Parquet file:

* ``spark``: :func:`mmpipeline.clean.transforms.tag_products` as the stage runs it
  (:func:`mmpipeline.clean.stage.tag_once`: Spark SQL cleaning with bronze read once, vectorised
  UDFs only for the flagged rows, price parsing, de-duplication by window, hashes), then the
  silver and quarantine outputs are materialised (``noop`` sink, so the lake is not part of the
  measurement);
* ``pandas``: :func:`clean_products_pandas`, the same cleaning written as plain pandas on one core,
  using the same scalar functions.

The JSON shows both rates, their ratio, and whether both produced the same kept/quarantined rows.
Params: ``rows``, ``source`` (a Home Depot-style CSV; default the products source of ``--config``
or ``../shared/datasets/homedepot/relevance.csv``), ``workdir``, ``skip_pandas``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmpipeline.clean.text import clean_text, parse_price

log = logging.getLogger(__name__)

_PRICE_FORMATS = ["${:,.2f}", "{:.2f} USD", "USD {:,.2f}", "{:.2f}"]


def _default_source(cfg) -> Path | None:
    if cfg is not None and "products" in cfg.sources and cfg.sources["products"].path:
        return Path(cfg.sources["products"].path)
    p = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "homedepot" / "relevance.csv"
    return p if p.is_file() else None


def build_catalog(source: Path | None, rows: int, seed: int = 0) -> pd.DataFrame:
    """A bronze-shaped products frame of ``rows`` rows scaled up from ``source`` titles."""
    rng = np.random.default_rng(seed)
    if source is not None and source.is_file():
        base = pd.read_csv(source, usecols=["product_uid", "product_title"], dtype=str, encoding="latin-1")
        base = base.drop_duplicates("product_uid")
        titles, uids = base["product_title"].to_numpy(), base["product_uid"].to_numpy()
    else:  # no shared datasets: generated titles
        from mmpipeline.sources.sample import write_sample_data

        tmp = Path(tempfile.mkdtemp(prefix="mmp-bench-sample-"))
        write_sample_data(tmp, n_products=2000, seed=seed)
        base = pd.read_csv(tmp / "products.csv", dtype=str)
        shutil.rmtree(tmp, ignore_errors=True)
        titles, uids = base["title"].to_numpy(), base["id"].to_numpy()
    n_dup = int(rows * 0.02)
    n_unique = rows - n_dup
    idx = np.arange(n_unique)
    src = idx % len(titles)
    copy = idx // len(titles)
    pid = np.char.add(np.char.add(uids[src].astype(str), "-"), copy.astype(str))
    title = titles[src].astype(object)
    junk = rng.random(n_unique) < 0.1
    title[junk] = ["<b>" + t + "</b>&nbsp;&amp; more" for t in title[junk]]
    prices = np.round(rng.lognormal(3.5, 1.0, n_unique), 2)
    fmt = rng.integers(0, len(_PRICE_FORMATS), n_unique)
    price = np.array([_PRICE_FORMATS[f].format(p) for f, p in zip(fmt, prices)], dtype=object)
    eur = rng.random(n_unique) < 0.1
    price[eur] = [f"{p:.2f} EUR".replace(".", ",") for p in prices[eur]]
    bad = rng.random(n_unique)
    price[bad < 0.005] = "call for price"
    price[(bad >= 0.005) & (bad < 0.01)] = [f"-{p:.2f}" for p in prices[(bad >= 0.005) & (bad < 0.01)]]
    desc = np.where(rng.random(n_unique) < 0.3, "<p>Great value &amp; quality.</p>  Ships   fast.", None)
    brand = np.array([t.split(" ", 1)[0] if isinstance(t, str) else None for t in titles[src]], dtype=object)
    day = rng.integers(1, 28, n_unique)
    updated = np.array([f"2026-01-{d:02d}T00:00:00Z" for d in day], dtype=object)
    df = pd.DataFrame({"product_id": pid, "title": title, "description": desc, "brand": brand, "price": price,
                       "updated_at": updated})
    dups = df.sample(n=n_dup, random_state=seed, replace=len(df) < n_dup).copy()
    dups["price"] = "$9.99"
    dups["updated_at"] = "2026-02-15T00:00:00Z"
    df = pd.concat([df, dups], ignore_index=True)
    for c in ("category_path", "currency", "image_ref", "popularity", "rating", "_corrupt_record"):
        df[c] = pd.Series(None, index=df.index, dtype="string")
    df["description"] = df["description"].astype("string")
    df["_row_id"] = np.arange(len(df), dtype="int64")
    df["_source_file"] = "bench"
    df["_batch_id"] = "bench"
    df["_raw"] = df["product_id"]  # stands in for the source row JSON
    return df


# ----------------------------------------------------------------------------- pandas baseline

def _sha256(parts) -> str:
    return hashlib.sha256("\u001f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()


def clean_products_pandas(df: pd.DataFrame, max_title_chars: int = 500, min_title_chars: int = 2,
                          max_price: float = 1e6, default_currency: str = "USD") -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Plain pandas version of the product cleaning: returns (silver, quarantine, folded)."""
    out = pd.DataFrame(index=df.index)
    pid = df["product_id"].str.strip()
    out["product_id"] = pid.where(pid != "")
    out["title"] = df["title"].map(clean_text, na_action="ignore").str.slice(0, max_title_chars)
    for c in ("description", "brand", "category_path"):
        out[c] = df[c].map(clean_text, na_action="ignore")
    parsed = [parse_price(p, max_price) if isinstance(p, str) else (None, None, None, None) for p in df["price"]]
    pp = pd.DataFrame(parsed, columns=["price", "currency", "error", "detail"], index=df.index)
    out["price"] = pp["price"]
    out["currency"] = df["currency"].str.strip().str.upper().fillna(pp["currency"])
    out["currency"] = out["currency"].where(out["currency"].notna() | pp["price"].isna(), default_currency)
    out["updated_at"] = pd.to_datetime(df["updated_at"], errors="coerce", utc=True, format="ISO8601")
    out["text_hash"] = [_sha256(t) for t in zip(out["title"], out["description"], out["brand"], out["category_path"])]
    out["_row_id"] = df["_row_id"]
    reason = np.select(
        [df["_corrupt_record"].notna(), out["product_id"].isna(), out["title"].isna(),
         out["title"].str.len() < min_title_chars, pp["error"].notna()],
        ["malformed_record", "missing_id", "empty_title", "title_too_short", pp["error"].fillna("")], default="")
    out["_reason"] = reason
    valid = out[out["_reason"] == ""].copy()
    valid["_content"] = [_sha256(t) for t in zip(valid["title"], valid["description"], valid["brand"],
                                                    valid["category_path"], valid["price"], valid["currency"],
                                                    valid["updated_at"])]
    valid = valid.sort_values(["product_id", "updated_at", "_row_id"], ascending=[True, False, False],
                              na_position="last")
    rank = valid.groupby("product_id", sort=False).cumcount()
    winner_content = valid.groupby("product_id", sort=False)["_content"].transform("first")
    kept = valid[rank == 0]
    folded = int(((rank > 0) & (valid["_content"] == winner_content)).sum())
    dup = valid[(rank > 0) & (valid["_content"] != winner_content)].assign(_reason="duplicate")
    quarantine = pd.concat([out[out["_reason"] != ""], dup])
    silver = kept.drop(columns=["_content", "_reason", "_row_id"])
    return silver, quarantine[["product_id", "_reason", "_row_id"]], folded


# ------------------------------------------------------------------------------------------- main

def main(cfg, params: dict[str, Any]) -> dict[str, Any]:
    from mmpipeline.clean import transforms as T
    from mmpipeline.config import CleanConfig
    from mmpipeline.spark import get_spark

    rows = int(params.get("rows", 1_000_000))
    source = Path(params["source"]) if params.get("source") else _default_source(cfg)
    if source is not None and not source.is_file():
        log.warning("bench clean: %s is not a file: scaling generated titles instead (set MMP_DATASETS or "
                    "--param source=<relevance.csv>)", source)
        source = None
    c = cfg.clean if cfg is not None else CleanConfig()
    work = Path(params.get("workdir") or tempfile.mkdtemp(prefix="mmp-bench-clean-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "bronze_products.parquet"
    try:
        t0 = time.perf_counter()
        cat = build_catalog(source, rows)
        cat.to_parquet(data, index=False, row_group_size=max(10_000, rows // 16))
        build_s = time.perf_counter() - t0
        log.info("bench clean: %d rows scaled from %s in %.1fs", len(cat), source or "generated titles", build_s)
        del cat

        spark = get_spark(cfg)
        spark.read.parquet(str(data)).limit(1).collect()  # warm-up: session, Python workers
        t0 = time.perf_counter()
        bronze = spark.read.parquet(str(data))
        from mmpipeline.clean.stage import quarantined_with_raw, release, tag_once

        tagged = tag_once(T.tag_products, bronze, c, cached=[])  # as the clean stage does: computed once
        counts = T.outcome_counts(tagged)
        T.products_silver(tagged).write.format("noop").mode("overwrite").save()
        T.quarantine_rows(quarantined_with_raw(tagged, bronze, counts), "product_id", "2026-01-01").write.format("noop").mode("overwrite").save()
        spark_s = time.perf_counter() - t0
        release(tagged)
        result: dict[str, Any] = {
            "benchmark": "clean", "rows": rows, "source": str(source) if source else "generated",
            "cores": os.cpu_count(), "spark_master": spark.sparkContext.master,
            "spark": {"seconds": round(spark_s, 2), "rows_per_s": round(rows / spark_s, 1),
                      "kept": counts[T.KEPT], "folded": counts[T.FOLDED], "quarantined": counts[T.QUARANTINED],
                      "reasons": counts["reasons"]},
        }
        log.info("bench clean: spark %.1fs (%.0f rows/s)", spark_s, rows / spark_s)
        if not params.get("skip_pandas"):
            t0 = time.perf_counter()
            pdf = pd.read_parquet(data)
            silver, quarantine, folded = clean_products_pandas(pdf, c.max_title_chars, c.min_title_chars,
                                                                c.max_price, c.default_currency)
            pandas_s = time.perf_counter() - t0
            reasons = quarantine["_reason"].value_counts().to_dict()
            result["pandas"] = {"seconds": round(pandas_s, 2), "rows_per_s": round(rows / pandas_s, 1),
                                "kept": len(silver), "folded": folded, "quarantined": len(quarantine),
                                "reasons": {k: int(v) for k, v in reasons.items()}}
            result["spark_over_pandas"] = round(pandas_s / spark_s, 3)
            result["same_result"] = (len(silver) == counts[T.KEPT] and len(quarantine) == counts[T.QUARANTINED]
                                     and folded == counts[T.FOLDED])
            log.info("bench clean: pandas %.1fs (%.0f rows/s)", pandas_s, rows / pandas_s)
        result["build_seconds"] = round(build_s, 2)
        return json.loads(json.dumps(result, default=str))
    finally:
        if not params.get("workdir"):
            shutil.rmtree(work, ignore_errors=True)
