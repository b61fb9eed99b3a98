"""Data-layer benchmark: prepare a large synthetic catalog, then measure shard read throughput.

    python benchmarks/bench_data.py [--items 1000000] [--users 200000] [--keep DIR]

Prints preparation time and peak memory (ru_maxrss of this process, target < 4 GB), then samples/s
of the train split with 0 and 2 loader workers, and items/s of the item blocks.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

from rodpo_dist.config import config_from_dict
from rodpo_dist.data import iter_item_blocks, sequence_loader
from rodpo_dist.data.prepare import prepare, stats


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep", help="prepare into this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
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
