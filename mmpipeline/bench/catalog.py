"""Scaled catalogs for ``bench scale``: real sample titles, queries and grades at any size.

:func:`write_scaled_catalog` draws from both sample datasets (Home Depot titles, queries and human
grades; fashion titles, category paths and photos) and writes generic-adapter CSV sources of
``n`` products (plus queries and judgments), with realistic variation:

* new product ids (every base product repeated as many times as the size needs);
* HTML junk on about 8% of the titles (tags, ``<style>`` blocks, entities in odd case, encoded tags,
  stray whitespace; a few with non-ASCII characters) and HTML descriptions on about 30%;
* prices in several formats and currencies (``$1,299.00``, ``12,50 EUR``, ``USD 65.74``,
  ``€9,99``), about 0.5% unparseable and 0.5% negative;
* about 2% updated duplicates (the same id again with a later ``updated_at`` and a new price);
* every product drawn from the fashion sample keeps its photo: ``image_ref`` points at the real
  file under new ids (about 1% of those at a missing file);
* queries drawn from the real Home Depot search terms (with case/punctuation variation), and
  judgments from the real (query, product, grade) rows, mapped onto the new ids.

Returns the config ``sources`` block for the files, so the stages read them as they would any
retailer export.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_TITLE_JUNK = [
    "<b>{t}</b>&nbsp;", "{t} &amp; more", "<p>{t}</p><style>.promo{{color:red}}</style>", "{t}&Nbsp;",
    "  {t}  \t", "&lt;i&gt;{t}&lt;/i&gt;", "{t} &Amp; Co", "<span class='x'>{t}</span><script>track()</script>",
    "{t} &quot;new&quot;", "{t}&#39;s",
]
_TITLE_NON_ASCII = ["{t}\u00a0\u2122", "{t} \u2013 caf\u00e9", "\uff2e\uff25\uff37 {t}"]
_DESC = ["<p>{t}. Great value &amp; quality.</p>  Ships   fast.",
         "<div><style>p{{margin:0}}</style><ul><li>{t}</li><li>Easy to clean</li></ul></div>",
         "{t} &ndash; see store for details"]
_PRICE_FORMATS = ["${:,.2f}", "{:.2f} USD", "USD {:,.2f}", "{:.2f}"]
_QUERY_VARIANTS = ["{q}", "{q}", "{q}", "{Q}", " {q}?", "{q}  ", "{q}!"]


def _datasets(datasets: Path) -> dict[str, Any]:
    hd = pd.read_csv(datasets / "homedepot" / "relevance.csv", encoding="latin-1", dtype=str)
    fa = pd.read_csv(datasets / "fashion" / "products.csv", dtype=str)
    img_dir = datasets / "fashion" / "images"
    have = {p.stem for p in img_dir.glob("*.jpg")} if img_dir.is_dir() else set()
    hd_products = hd.drop_duplicates("product_uid")[["product_uid", "product_title"]]
    cat = (fa["masterCategory"].fillna("") + " > " + fa["subCategory"].fillna("") + " > "
           + fa["articleType"].fillna(""))
    pool = pd.DataFrame({
        "base_id": np.concatenate([hd_products["product_uid"].to_numpy(), fa["id"].to_numpy()]),
        "title": np.concatenate([hd_products["product_title"].to_numpy(), fa["title"].to_numpy()]),
        "category": np.concatenate([np.full(len(hd_products), None, dtype=object), cat.to_numpy()]),
        "image": np.concatenate([np.full(len(hd_products), None, dtype=object),
                                 np.array([f"{i}.jpg" if i in have else None for i in fa["id"]], dtype=object)]),
    })
    return {"pool": pool, "judgments": hd[["search_term", "product_uid", "relevance"]],
            "image_root": img_dir if img_dir.is_dir() else None}


def write_scaled_catalog(out: Path, n: int, datasets: Path, seed: int = 0) -> dict[str, Any]:
    """Write products.csv, queries.csv and judgments.csv for ``n`` products under ``out``; return
    ``{"sources": <config sources block>, "counts": {...}}``."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    d = _datasets(datasets)
    pool = d["pool"]
    n_dup = int(n * 0.02)
    n_unique = n - n_dup
    # interleave the two samples so every size mixes both (and the image share is size-independent)
    order = np.random.default_rng(1).permutation(len(pool))
    src = order[np.arange(n_unique) % len(pool)]
    base = pool.iloc[src].reset_index(drop=True)
    title = base["title"].to_numpy(dtype=object).copy()
    r = rng.random(n_unique)
    junk = r < 0.08
    k = rng.integers(0, len(_TITLE_JUNK), n_unique)
    title[junk] = [_TITLE_JUNK[j].format(t=t) for j, t in zip(k[junk], title[junk])]
    na = (r >= 0.08) & (r < 0.083)
    k2 = rng.integers(0, len(_TITLE_NON_ASCII), n_unique)
    title[na] = [_TITLE_NON_ASCII[j].format(t=t) for j, t in zip(k2[na], title[na])]
    has_desc = rng.random(n_unique) < 0.3
    k3 = rng.integers(0, len(_DESC), n_unique)
    desc = np.full(n_unique, None, dtype=object)
    desc[has_desc] = [_DESC[j].format(t=t) for j, t in zip(k3[has_desc], base["title"].to_numpy()[has_desc])]
    brand = np.array([t.split(" ", 1)[0] if isinstance(t, str) and t else None for t in base["title"]], dtype=object)
    prices = np.round(rng.lognormal(3.5, 1.0, n_unique), 2)
    fmt = rng.integers(0, len(_PRICE_FORMATS), n_unique)
    price = np.array([_PRICE_FORMATS[f].format(p) for f, p in zip(fmt, prices)], dtype=object)
    pr = rng.random(n_unique)
    eur = pr < 0.08
    price[eur] = [f"{p:.2f} EUR".replace(".", ",") for p in prices[eur]]
    euro = (pr >= 0.08) & (pr < 0.09)
    price[euro] = [f"\u20ac{p:.2f}".replace(".", ",") for p in prices[euro]]
    bad = rng.random(n_unique)
    price[bad < 0.005] = "call for price"
    neg = (bad >= 0.005) & (bad < 0.01)
    price[neg] = [f"-{p:.2f}" for p in prices[neg]]
    image = base["image"].to_numpy(dtype=object).copy()
    missing = np.array([x is not None for x in image]) & (rng.random(n_unique) < 0.01)
    image[missing] = [f"missing-{i}.jpg" for i in np.flatnonzero(missing)]
    day = rng.integers(1, 28, n_unique)
    pid = np.char.add("p", np.char.zfill(np.arange(n_unique).astype(str), 8))
    products = pd.DataFrame({
        "id": pid, "title": title, "description": desc, "brand": brand, "category": base["category"].to_numpy(),
        "price": price, "image": image, "updated_at": [f"2026-01-{x:02d}T00:00:00Z" for x in day]})
    dups = products.sample(n=n_dup, random_state=seed, replace=n_unique < n_dup).copy()
    dups["price"] = "$9.99"
    dups["updated_at"] = "2026-02-15T00:00:00Z"
    products = pd.concat([products, dups], ignore_index=True)
    products.to_csv(out / "products.csv", index=False)

    # queries: the real search terms, as typed, with variation
    terms = d["judgments"]["search_term"].dropna().unique()
    n_q = max(50, n // 20)
    q = terms[rng.integers(0, len(terms), n_q)]
    v = rng.integers(0, len(_QUERY_VARIANTS), n_q)
    queries = pd.DataFrame({"query": [_QUERY_VARIANTS[j].format(q=s, Q=s.upper()) for j, s in zip(v, q)]})
    queries.to_csv(out / "queries.csv", index=False)

    # judgments: real (query, product, grade) rows whose product exists at this size, on new ids
    j = d["judgments"]
    pos = {b: i for i, b in enumerate(pool["base_id"])}
    inv = np.empty(len(pool), dtype=np.int64)
    inv[order] = np.arange(len(pool))  # base index -> first new index using it
    jb = np.array([inv[pos[u]] if u in pos else -1 for u in j["product_uid"]])
    ok = (jb >= 0) & (jb < n_unique)
    j = j[ok].reset_index(drop=True)
    jb = jb[ok]
    n_j = max(100, n // 5)
    pick = rng.integers(0, len(j), n_j)
    copies = np.maximum(1, (n_unique - jb[pick] + len(pool) - 1) // len(pool))
    new_idx = jb[pick] + len(pool) * (rng.integers(0, 1 << 30, n_j) % copies)
    judgments = pd.DataFrame({"query": j["search_term"].to_numpy()[pick],
                              "product_id": pid[new_idx], "grade": j["relevance"].to_numpy()[pick]})
    judgments.to_csv(out / "judgments.csv", index=False)
    counts = {"products": len(products), "queries": len(queries), "judgments": len(judgments),
              "with_image": int(sum(x is not None for x in image)), "duplicates": n_dup,
              "non_ascii_titles": int(na.sum()), "html_titles": int(junk.sum())}
    csv = {"format": "csv", "options": {"header": True, "multiLine": False}}
    sources = {
        "products": {"path": str(out / "products.csv"), **csv,
                     "image_root": str(d["image_root"]) if d["image_root"] else None,
                     "columns": {"product_id": "id", "title": "title", "description": "description", "brand": "brand",
                                 "category_path": "category", "price": "price", "image_ref": "image",
                                 "updated_at": "updated_at"}},
        "queries": {"path": str(out / "queries.csv"), **csv, "columns": {"query": "query"}},
        "judgments": {"path": str(out / "judgments.csv"), **csv,
                      "columns": {"query": "query", "product_id": "product_id", "grade": "grade"},
                      "params": {"label": "scale-bench"}},
    }
    return {"sources": sources, "counts": counts}
