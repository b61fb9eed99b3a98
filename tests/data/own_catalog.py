"""A small own catalog (events with ratings and times, a product table with titles, brands, categories
and image vectors), written in every supported layout with the same content.

Designed so that the expected result is known: users u00..u11 each keep 4-6 positively rated
products in time order; besides them the events hold low ratings (left out by `min_rating: 3`), a
product seen once (`p99`, dropped by `min_item_users: 2`), and a user with two positives (`u99`,
dropped by k-core). Product `p05` has no image vector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MIN_RATING = 3.0
KEPT_ITEMS = [f"p{i:02d}" for i in range(1, 13)]
IMAGE_DIM = 6
BRANDS = ["acme", "globex", "initech"]
CATEGORIES = ["books", "garden", "kitchen", "toys"]


@dataclass
class Catalog:
    events: list[tuple[str, str, float, int]]
    """(user, item, stars, unix seconds), in no particular order."""
    items: list[dict]
    """{"id", "title", "brand", "category", "image" (list or None)}."""
    sequences: dict[str, list[str]]
    """The expected result: raw user id -> raw item ids in time order."""

    def image(self, item: str) -> list[float] | None:
        return next(row["image"] for row in self.items if row["id"] == item)

    def text(self, item: str) -> str:
        """The text the item table path embeds: its text columns joined with their names."""
        row = next(row for row in self.items if row["id"] == item)
        return f"title: {row['title']}"

    def tokens(self, item: str) -> list[str]:
        row = next(row for row in self.items if row["id"] == item)
        return [f"brand={row['brand']}", f"category={row['category']}"]


def make_catalog(seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    sequences = {f"u{u:02d}": list(rng.choice(KEPT_ITEMS, size=int(rng.integers(4, 7)), replace=False))
                 for u in range(12)}
    for item in KEPT_ITEMS:  # every kept product has >= 2 users
        for user in ("u00", "u01"):
            if item not in sequences[user]:
                sequences[user].append(item)
    events = []
    for user, items in sequences.items():
        start = 1_700_000_000 + int(rng.integers(0, 10**6))
        events += [(user, item, float(rng.choice([3, 4, 5])), start + 3600 * k) for k, item in enumerate(items)]
        events.append((user, str(rng.choice(KEPT_ITEMS)), 1.0, start + 1800))  # a dislike: left out
    events += [("u03", "p99", 5.0, 1_690_000_000), ("u99", "p01", 4.0, 1_700_000_000),
               ("u99", "p02", 5.0, 1_700_000_100), ("u99", "p03", 2.0, 1_700_000_200)]
    order = rng.permutation(len(events))
    items = [{"id": item, "title": f"{BRANDS[i % 3]} product number {i} for {CATEGORIES[i % 4]}",
              "brand": BRANDS[i % 3], "category": CATEGORIES[i % 4],
              "image": None if item == "p05" else [round(float(v), 4) for v in rng.standard_normal(IMAGE_DIM)]}
             for i, item in enumerate(KEPT_ITEMS + ["p98", "p99"], 1)]
    return Catalog([events[i] for i in order], items, sequences)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_csv(catalog: Catalog, folder: Path) -> dict:
    """Events CSV with custom column names and ISO times; product CSV; images as a keyed .npy."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.csv").write_text("customer,product,stars,when\n" + "".join(
        f"{u},{i},{s},{_iso(t)}\n" for u, i, s, t in catalog.events))
    (folder / "products.csv").write_text("sku,title,brand,category\n" + "".join(
        f"{r['id']},\"{r['title']}\",{r['brand']},{r['category']}\n" for r in catalog.items))
    with_image = [r for r in catalog.items if r["image"] is not None]
    np.save(folder / "images.npy", np.array([r["image"] for r in with_image], dtype=np.float32))
    (folder / "images.ids.txt").write_text("".join(f"{r['id']}\n" for r in with_image))
    return {"source": "interactions", "path": str(folder / "events.csv"),
            "columns": {"user": "customer", "item": "product", "timestamp": "when", "rating": "stars"},
            "items": {"path": str(folder / "products.csv"), "id": "sku", "text": ["title"],
                      "attributes": ["brand", "category"], "vectors": {"image": str(folder / "images.npy")}}}


def _table(catalog: Catalog) -> pa.Table:
    return pa.table({"item": [r["id"] for r in catalog.items], "title": [r["title"] for r in catalog.items],
                     "brand": [r["brand"] for r in catalog.items], "category": [r["category"] for r in catalog.items],
                     "image": pa.array([r["image"] for r in catalog.items], pa.list_(pa.float32()))})


def _config(folder: Path, events: str, items: str) -> dict:
    return {"source": "interactions", "path": str(folder / events), "columns": {"rating": "stars"},
            "items": {"path": str(folder / items), "text": ["title"], "attributes": ["brand", "category"],
                      "vectors": {"image": "image"}}}


def write_parquet(catalog: Catalog, folder: Path) -> dict:
    """Parquet with the default column names, numeric times, image vectors as a list column."""
    folder.mkdir(parents=True, exist_ok=True)
    users, items, stars, times = zip(*catalog.events)
    pq.write_table(pa.table({"user": users, "item": items, "stars": stars, "timestamp": times}),
                   folder / "events.parquet", row_group_size=16)
    pq.write_table(_table(catalog), folder / "items.parquet", row_group_size=5)
    return _config(folder, "events.parquet", "items.parquet")


def write_jsonl(catalog: Catalog, folder: Path) -> dict:
    """JSON lines with ISO times and vectors as arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_text("".join(json.dumps({"user": u, "item": i, "stars": s, "timestamp": _iso(t)})
                                                 + "\n" for u, i, s, t in catalog.events))
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _table(catalog).to_pylist()))
    return _config(folder, "events.jsonl", "items.jsonl")


def write_recbole(catalog: Catalog, folder: Path, name: str = "shop") -> dict:
    """RecBole atomic files: token_seq title (text), token brand / category (attributes), float_seq image."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{s}\t{t}\n" for u, i, s, t in catalog.events))
    (folder / f"{name}.item").write_text("item_id:token\ttitle:token_seq\tbrand:token\tcategory:token\t"
                                         "image:float_seq\n" + "".join(
        f"{r['id']}\t{r['title']}\t{r['brand']}\t{r['category']}\t{' '.join(map(str, r['image'] or []))}\n"
        for r in catalog.items))
    return {"source": "recbole", "path": str(folder), "name": name}


def write_s3rec(catalog: Catalog, folder: Path, name: str = "Shop") -> dict:
    """The expected result in the S3-Rec layout (ids 1..N in sorted raw-id order, users likewise);
    attribute ids index the sorted attribute tokens; images as a .npy keyed by raw id."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {item: i for i, item in enumerate(KEPT_ITEMS, 1)}
    (folder / f"{name}.txt").write_text("".join(f"{u} " + " ".join(str(index[i]) for i in catalog.sequences[user])
                                                + "\n" for u, user in enumerate(sorted(catalog.sequences), 1)))
    vocab = {t: a for a, t in enumerate(sorted({t for item in KEPT_ITEMS for t in catalog.tokens(item)}))}
    (folder / f"{name}_item2attributes.json").write_text(json.dumps(
        {str(index[item]): sorted(vocab[t] for t in catalog.tokens(item)) for item in KEPT_ITEMS}))
    (folder / f"{name}_items.tsv").write_text("item_id\tasin\ttext\n" + "".join(
        f"{index[item]}\t{item}\t{catalog.text(item)}\n" for item in KEPT_ITEMS))
    with_image = [item for item in KEPT_ITEMS if catalog.image(item) is not None]
    np.save(folder / "images.npy", np.array([catalog.image(item) for item in with_image], dtype=np.float32))
    (folder / "images.ids.txt").write_text("".join(f"{item}\n" for item in with_image))
    return {"source": "s3rec", "path": str(folder), "name": name, "feature_files": {"image": str(folder / "images.npy")}}


WRITERS = {"csv": write_csv, "parquet": write_parquet, "jsonl": write_jsonl, "recbole": write_recbole,
           "s3rec": write_s3rec}
