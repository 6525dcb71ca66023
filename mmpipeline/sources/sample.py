"""A small generated catalog that exercises every modality, so the pipeline runs without ``../shared``.

``mmpipeline sample-data OUT_DIR`` writes::

    OUT_DIR/products.csv        id, title, description (with some HTML), brand, category columns,
                                gender/colour/article_type/usage attributes, price as text with a
                                currency, popularity, rating, updated_at, image (file name)
    OUT_DIR/images/<id>.jpg     a rendered silhouette of the article type, filled with the product's
                                colour (the image carries the colour even when the title omits it)
    OUT_DIR/queries.csv         query, frequency
    OUT_DIR/judgments.csv       query, product_id, grade (0-3 from attribute matches)
    OUT_DIR/interactions.jsonl  query, product_id, event_type, ts, session
    OUT_DIR/manifest.json       counts and the deliberate defects

Deliberate, realistic defects (the clean stage must quarantine or flag them, losing nothing):
one product whose image file is missing, one unparseable price, one duplicate id (a newer record of
an existing product), one title full of HTML junk.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

COLOURS: dict[str, tuple[int, int, int]] = {
    "Black": (20, 20, 20), "White": (245, 245, 245), "Red": (200, 30, 35), "Blue": (40, 80, 200),
    "Navy Blue": (20, 30, 90), "Green": (40, 150, 60), "Yellow": (240, 210, 40), "Pink": (240, 140, 180),
    "Grey": (128, 128, 128), "Brown": (120, 75, 40), "Purple": (120, 50, 150), "Orange": (245, 130, 30),
}
# article type -> (master category, sub category, genders, usage, base price)
ARTICLES: dict[str, tuple[str, str, list[str], str, float]] = {
    "Tshirts": ("Apparel", "Topwear", ["Men", "Women", "Boys", "Girls"], "Casual", 15.0),
    "Shirts": ("Apparel", "Topwear", ["Men", "Women"], "Formal", 30.0),
    "Dresses": ("Apparel", "Dress", ["Women", "Girls"], "Casual", 45.0),
    "Trousers": ("Apparel", "Bottomwear", ["Men", "Women"], "Formal", 40.0),
    "Shorts": ("Apparel", "Bottomwear", ["Men", "Women", "Boys"], "Sports", 18.0),
    "Casual Shoes": ("Footwear", "Shoes", ["Men", "Women"], "Casual", 55.0),
    "Caps": ("Accessories", "Headwear", ["Unisex"], "Sports", 12.0),
    "Handbags": ("Accessories", "Bags", ["Women"], "Casual", 60.0),
    "Backpacks": ("Accessories", "Bags", ["Unisex"], "Casual", 35.0),
    "Watches": ("Accessories", "Watches", ["Men", "Women"], "Casual", 120.0),
}
BRANDS = ["Northwind", "Alder & Co", "Brightline", "Kestrel", "Urban Loom", "Marlow", "Tidewater", "Solace"]
ADJECTIVES = ["Classic", "Slim Fit", "Everyday", "Premium", "Lightweight", "Vintage", "Essential", "Sport"]
FEATURES = ["breathable cotton", "recycled materials", "a relaxed fit", "reinforced stitching",
            "a water-resistant finish", "soft lining", "an adjustable strap", "a classic cut"]
CURRENCY_FORMATS = ["${:,.2f}", "{:.2f} USD", "USD {:.2f}", "${:.2f}"]


def _shape(article: str, w: int, h: int) -> list[tuple[float, float]] | tuple[str, tuple]:
    """A silhouette polygon (or ellipse box) for an article type, in pixel coordinates."""
    cx = w / 2
    if article in ("Tshirts", "Shirts"):
        sleeve = 0.42 if article == "Tshirts" else 0.47
        return [(cx - w * 0.18, h * 0.12), (cx + w * 0.18, h * 0.12), (cx + w * sleeve, h * 0.3),
                (cx + w * 0.32, h * 0.4), (cx + w * 0.25, h * 0.33), (cx + w * 0.25, h * 0.9),
                (cx - w * 0.25, h * 0.9), (cx - w * 0.25, h * 0.33), (cx - w * 0.32, h * 0.4),
                (cx - w * sleeve, h * 0.3)]
    if article == "Dresses":
        return [(cx - w * 0.12, h * 0.08), (cx + w * 0.12, h * 0.08), (cx + w * 0.16, h * 0.35),
                (cx + w * 0.38, h * 0.92), (cx - w * 0.38, h * 0.92), (cx - w * 0.16, h * 0.35)]
    if article in ("Trousers", "Shorts"):
        leg = 0.92 if article == "Trousers" else 0.55
        return [(cx - w * 0.25, h * 0.08), (cx + w * 0.25, h * 0.08), (cx + w * 0.3, h * leg),
                (cx + w * 0.04, h * leg), (cx, h * 0.3), (cx - w * 0.04, h * leg), (cx - w * 0.3, h * leg)]
    if article == "Casual Shoes":
        return [(w * 0.1, h * 0.5), (w * 0.45, h * 0.45), (w * 0.6, h * 0.6), (w * 0.9, h * 0.65),
                (w * 0.92, h * 0.78), (w * 0.1, h * 0.78)]
    if article == "Caps":
        return ("pieslice", (w * 0.15, h * 0.3, w * 0.85, h * 0.85, 180, 360))
    if article in ("Handbags", "Backpacks"):
        top = 0.3 if article == "Handbags" else 0.15
        return [(w * 0.2, h * top), (w * 0.8, h * top), (w * 0.85, h * 0.88), (w * 0.15, h * 0.88)]
    if article == "Watches":
        return ("ellipse", (w * 0.25, h * 0.3, w * 0.75, h * 0.7))
    return [(w * 0.2, h * 0.2), (w * 0.8, h * 0.2), (w * 0.8, h * 0.8), (w * 0.2, h * 0.8)]


def render_product_image(article: str, colour: str, rng: random.Random, size: tuple[int, int] = (60, 80)):
    """A PIL image: light background, the article's silhouette in the colour, slight jitter/noise."""
    from PIL import Image, ImageDraw

    w, h = size
    bg = (200, 205, 210) if colour == "White" else (238 + rng.randint(-8, 8),) * 3
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    rgb = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in COLOURS[colour])
    dx, dy = rng.uniform(-3, 3), rng.uniform(-3, 3)
    shape = _shape(article, w, h)
    if isinstance(shape, tuple):
        kind, box = shape
        if kind == "pieslice":
            draw.pieslice([box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy], box[4], box[5], fill=rgb)
            draw.rectangle([box[2] - w * 0.1 + dx, (box[1] + box[3]) / 2 - 3 + dy, box[2] + w * 0.1 + dx,
                            (box[1] + box[3]) / 2 + dy], fill=rgb)
        else:
            draw.rectangle([w * 0.42 + dx, h * 0.05, w * 0.58 + dx, h * 0.95], fill=(60, 60, 60))
            draw.ellipse([box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy], fill=rgb, outline=(30, 30, 30))
    else:
        draw.polygon([(x + dx, y + dy) for x, y in shape], fill=rgb, outline=tuple(int(c * 0.6) for c in rgb))
    return img


def _singular(article: str) -> str:
    return article[:-2] if article.endswith(("sses", "ches")) else article[:-1] if article.endswith("s") else article


def _grade(q: dict[str, str], p: dict[str, Any]) -> int:
    """0-3: the article type must match for any relevance; each further matching attribute adds one."""
    if p["article_type"] != q["article_type"]:
        return 0
    g = 1
    for k in ("colour", "gender"):
        if k in q:
            g += int(p[k] == q[k] or (k == "gender" and p[k] == "Unisex"))
        else:
            g += 1  # the query does not constrain it
    return g


def write_sample_data(out_dir: str | Path, n_products: int = 400, seed: int = 0) -> dict[str, Any]:
    """Write the generated catalog under ``out_dir``; returns a summary (counts, defects, paths)."""
    rng = random.Random(seed)
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    base_time = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    products: list[dict[str, Any]] = []
    for i in range(n_products):
        article = rng.choice(list(ARTICLES))
        master, sub, genders, usage, base_price = ARTICLES[article]
        gender = rng.choice(genders)
        colour = rng.choice(list(COLOURS))
        brand = rng.choice(BRANDS)
        adj = rng.choice(ADJECTIVES)
        pid = str(10000 + i)
        omit_colour = rng.random() < 0.3  # sellers often omit the colour word: only the image shows it
        title = " ".join(x for x in [brand, adj, gender if gender != "Unisex" else "", "" if omit_colour else colour,
                                     _singular(article) if rng.random() < 0.5 else article] if x)
        feats = rng.sample(FEATURES, 2)
        description = rng.choice([
            f"<p>{adj} {article.lower()} with {feats[0]} &amp; {feats[1]}.</p>",
            f"{adj} {article.lower()} made with {feats[0]}.  Features {feats[1]}.",
            f"<ul><li>{feats[0].capitalize()}</li><li>{feats[1].capitalize()}</li></ul>",
        ])
        price = round(base_price * rng.uniform(0.5, 3.0), 2) * (30 if rng.random() < 0.03 else 1)
        fmt = rng.choice(CURRENCY_FORMATS)
        price_text = fmt.format(price) if rng.random() > 0.1 else f"{price:.2f} EUR".replace(".", ",")
        updated = base_time + dt.timedelta(minutes=rng.randint(0, 60 * 24 * 60))
        products.append({
            "id": pid, "title": title, "description": description, "brand": brand,
            "master_category": master, "sub_category": sub, "article_type": article, "gender": gender,
            "colour": colour, "usage": usage, "price": price_text,
            "popularity": str(int(rng.paretovariate(1.2) * 10)), "rating": f"{rng.uniform(2.5, 5.0):.1f}",
            "updated_at": updated.strftime("%Y-%m-%dT%H:%M:%SZ"), "image": f"{pid}.jpg",
        })
    # images (one deliberately missing)
    defects: dict[str, Any] = {}
    missing_idx = min(5, n_products - 1)
    for j, p in enumerate(products):
        if j == missing_idx:
            continue
        render_product_image(p["article_type"], p["colour"], rng).save(img_dir / p["image"], "JPEG", quality=90)
    defects["missing_image"] = products[missing_idx]["id"]
    # one unparseable price, one HTML-junk title
    bad_price = products[min(7, n_products - 1)]
    bad_price["price"] = "call for price"
    defects["bad_price"] = bad_price["id"]
    junk = products[min(9, n_products - 1)]
    junk["title"] = f"<b>{junk['title']}</b>&nbsp;&nbsp;&#8482; <br/>"
    defects["html_title"] = junk["id"]
    # one duplicate id: a newer record of an existing product (new price), appended at the end
    dup = dict(products[min(3, n_products - 1)])
    dup["price"] = "$9.99"
    dup["updated_at"] = (base_time + dt.timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    products.append(dup)
    defects["duplicate_id"] = dup["id"]

    fields = list(products[0])
    with open(out / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(products)

    # queries: attribute combinations present in the catalog
    catalog = {p["id"]: p for p in products}  # the later duplicate wins, as the clean stage will decide
    combos: dict[str, dict[str, str]] = {}
    for p in catalog.values():
        at = p["article_type"].lower()
        g = p["gender"].lower()
        c = p["colour"].lower()
        combos.setdefault(f"{c} {at}", {"article_type": p["article_type"], "colour": p["colour"]})
        if p["gender"] != "Unisex":
            combos.setdefault(f"{g} {c} {at}", {"article_type": p["article_type"], "colour": p["colour"],
                                                "gender": p["gender"]})
        combos.setdefault(f"{g} {at}" if p["gender"] != "Unisex" else at,
                          {"article_type": p["article_type"], **({"gender": p["gender"]} if p["gender"] != "Unisex" else {})})
    qnames = sorted(combos)
    rng.shuffle(qnames)
    qnames = qnames[: max(10, min(len(qnames), n_products // 3))]
    queries = [{"query": q, "frequency": str(int(rng.paretovariate(1.0) * 5))} for q in qnames]
    with open(out / "queries.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["query", "frequency"])
        w.writeheader()
        w.writerows(queries)

    # graded judgments: every product of the article type (grades 1-3) plus a few grade-0 negatives
    judgments: list[dict[str, Any]] = []
    ids = sorted(catalog)
    for q in qnames:
        attrs = combos[q]
        for pid in ids:
            g = _grade(attrs, catalog[pid])
            if g > 0:
                judgments.append({"query": q, "product_id": pid, "grade": g})
        for pid in rng.sample(ids, min(5, len(ids))):
            if _grade(attrs, catalog[pid]) == 0:
                judgments.append({"query": q, "product_id": pid, "grade": 0})
    with open(out / "judgments.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["query", "product_id", "grade"])
        w.writeheader()
        w.writerows(judgments)

    # interactions: sessions see a shuffled result list; engagement probability grows with the grade
    by_query: dict[str, list[dict[str, Any]]] = {}
    for j in judgments:
        by_query.setdefault(j["query"], []).append(j)
    events: list[dict[str, Any]] = []
    n_sessions = max(20, n_products // 2)
    for s in range(n_sessions):
        q = rng.choice(qnames)
        shown = rng.sample(by_query[q], min(8, len(by_query[q])))
        t = base_time + dt.timedelta(days=60, seconds=rng.randint(0, 86400 * 7))
        sid = f"s{s:05d}"
        for j in shown:
            t += dt.timedelta(seconds=rng.randint(1, 5))
            ev = {"query": q, "product_id": j["product_id"], "session": sid}
            events.append({**ev, "event_type": "impression", "ts": t.isoformat()})
            if rng.random() < 0.05 + 0.2 * j["grade"]:
                t += dt.timedelta(seconds=rng.randint(2, 30))
                events.append({**ev, "event_type": "click", "ts": t.isoformat()})
                if rng.random() < 0.1 * j["grade"]:
                    t += dt.timedelta(seconds=rng.randint(5, 120))
                    events.append({**ev, "event_type": "add_to_cart", "ts": t.isoformat()})
                    if rng.random() < 0.5:
                        t += dt.timedelta(seconds=rng.randint(30, 600))
                        events.append({**ev, "event_type": "purchase", "ts": t.isoformat()})
    with open(out / "interactions.jsonl", "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")

    summary = {
        "out_dir": str(out.resolve()), "products": len(products), "distinct_products": len(catalog),
        "images": sum(1 for _ in img_dir.glob("*.jpg")), "queries": len(queries), "judgments": len(judgments),
        "interactions": len(events), "defects": defects,
    }
    (out / "manifest.json").write_text(json.dumps(summary, indent=2))
    return summary
