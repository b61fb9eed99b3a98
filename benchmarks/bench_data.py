"""Data-layer benchmarks.

    python benchmarks/bench_data.py [--items 1000000] [--users 200000] [--keep DIR]
    python benchmarks/bench_data.py --own-catalog [--rows 10000000] [--item-rows 1000000] [--chunk-rows 250000 1000000]

The first prepares a large synthetic catalog and prints preparation time and peak memory (ru_maxrss
of this process, target < 4 GB), then samples/s of the train split with 0 and 2 loader workers, and
items/s of the item blocks. The second writes an own catalog (an events CSV with custom column
names, ISO-8601 times and ratings; a product CSV with brands and multi-valued categories; image
vectors as a `.npy` keyed by product id) and prepares it once per chunk size, each in a child
process whose time and peak RSS are reported (`data.modalities: [attr, image]`: embedding a million
titles measures the sentence encoder, not the pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from rodpo_dist.config import config_from_dict
from rodpo_dist.data import iter_item_blocks, sequence_loader
from rodpo_dist.data.prepare import prepare, stats


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(pa.array(numbers).cast(pa.string()), 7, "0"), "")


def write_own_catalog(folder: Path, rows: int, item_rows: int, seed: int = 0) -> dict:
    """Events (Zipf-like item popularity, 50 events per user on average) and a product table; the data config."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, 2_000_000):  # written in parts, so generating is bounded too
        n = min(2_000_000, rows - start)
        items = np.minimum((rng.pareto(0.8, n) * item_rows / 50).astype(np.int64), item_rows - 1)
        times = pa.array(1_600_000_000 + rng.integers(0, 10**8, n)).cast(pa.timestamp("s"))
        table = pa.table({"customer": _ids("c", rng.integers(0, rows // 50, n)), "product": _ids("p", items),
                          "stars": rng.integers(1, 6, n), "when": pc.strftime(times, "%Y-%m-%dT%H:%M:%SZ")})
        with open(folder / "events.csv", "ab" if start else "wb") as f:
            pa_csv.write_csv(table, f, pa_csv.WriteOptions(include_header=not start, quoting_style="none"))
    brands = np.array([f"brand{b}" for b in range(100)])
    cats = np.array([f"cat{c}" for c in range(500)])
    products = pa.table({"sku": _ids("p", np.arange(item_rows)), "brand": brands[rng.integers(0, 100, item_rows)],
                         "categories": pc.binary_join_element_wise(cats[rng.integers(0, 500, item_rows)], "|",
                                                                   cats[rng.integers(0, 500, item_rows)], "")})
    pa_csv.write_csv(products, folder / "products.csv", pa_csv.WriteOptions(quoting_style="none"))
    np.save(folder / "images.npy", rng.standard_normal((item_rows, 32), dtype=np.float32))
    (folder / "images.ids.txt").write_text("\n".join(products["sku"].to_pylist()) + "\n")
    return {"source": "interactions", "path": str(folder / "events.csv"), "min_rating": 3,
            "columns": {"user": "customer", "item": "product", "timestamp": "when", "rating": "stars"},
            "items": {"path": str(folder / "products.csv"), "id": "sku", "attributes": ["brand", "categories"],
                      "vectors": {"image": str(folder / "images.npy")}},
            "modalities": ["attr", "image"]}


def _prepare_child(data: dict, out: str) -> None:
    """In a child process: prepare and print the manifest's counts as JSON."""
    manifest = prepare(config_from_dict({"data": data}).data, out, progress=False)
    print(json.dumps({"users": manifest.num_users, "items": manifest.num_items,
                      "interactions": manifest.num_interactions, "stats": manifest.stats}))


def bench_own_catalog(args: argparse.Namespace, root: Path) -> None:
    start = time.perf_counter()
    data = write_own_catalog(root / "raw", args.rows, args.item_rows)
    sizes = {p.name: p.stat().st_size / 2**20 for p in (root / "raw").iterdir()}
    print(f"generated {args.rows:,} events and {args.item_rows:,} products in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{name} {mb:,.0f} MiB" for name, mb in sorted(sizes.items())))
    for chunk in args.chunk_rows:
        config = json.dumps({**data, "read_chunk_rows": chunk})
        tic = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, "--prepare-child", config, str(root / f"out-{chunk}")],
                                 stdout=subprocess.PIPE, text=True)
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if status:
            raise SystemExit(f"prepare with read_chunk_rows={chunk} failed ({status})")
        counts = json.loads(out.strip().splitlines()[-1])
        print(f"read_chunk_rows {chunk:>9,}: {time.perf_counter() - tic:6.1f} s, peak RSS {usage.ru_maxrss / 2**20:.2f} "
              f"GiB -> {counts['users']:,} users, {counts['items']:,} items, {counts['interactions']:,} interactions; "
              f"{json.dumps(counts['stats'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep", help="prepare into this folder and keep it (default: a temp folder)")
    parser.add_argument("--own-catalog", action="store_true", help="the own-catalog benchmark (see above)")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--item-rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--prepare-child", nargs=2, metavar=("DATA_JSON", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare_child:
        _prepare_child(json.loads(args.prepare_child[0]), args.prepare_child[1])
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if args.own_catalog:
        root = Path(args.keep or tempfile.mkdtemp(prefix="bench_own-"))
        try:
            bench_own_catalog(args, root)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        return
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_data-"))
    out = root / "synthetic" if not args.keep else root
    cfg = config_from_dict({"data": {"synthetic": {"num_items": args.items, "num_users": args.users}}}).data
    try:
        start = time.perf_counter()
        manifest = prepare(cfg, out, progress=False)
        elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
        print(f"prepare: {args.items:,} items, {args.users:,} users, {manifest.num_interactions:,} interactions "
              f"in {elapsed:.1f} s; peak memory (ru_maxrss) {_peak_rss_gb():.2f} GiB; {size:.2f} GiB on disk")
        print(stats(out))
        for workers in (0, 2):
            start = time.perf_counter()
            n = sum(len(b["user"]) for b in sequence_loader(out, "train", args.batch_size, 50, shuffle=True,
                                                             seed=0, epoch=0, num_workers=workers))
            rate = n / (time.perf_counter() - start)
            print(f"train split, {workers} workers, batch {args.batch_size}, shuffle buffer 1000: {rate:,.0f} samples/s")
        start = time.perf_counter()
        n = sum(len(b["ids"]) for b in iter_item_blocks(out))
        print(f"item blocks (all modalities): {n / (time.perf_counter() - start):,.0f} items/s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
