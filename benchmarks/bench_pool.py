"""Candidate-pool refresh cost: time, pool memory and peak RSS for the last-position and the
all-position contexts, on a prepared dataset (e.g. Beauty) and on a large synthetic catalog.

  python benchmarks/bench_pool.py --config configs/beauty.yaml
  python benchmarks/bench_pool.py --config configs/demo.yaml --items 1000000 --users 5000

With `--items` the synthetic catalog of that size is generated first (in a temporary folder). The
model is untrained (the cost does not depend on the weights). Printed per setting: contexts, the
refresh time, the scoring rate (2 x contexts x items x d / time), the pool's size and the process
peak RSS so far. For scale: one full-softmax training epoch on the same contexts does four such
matmuls (scores, recomputed scores, two gradients), so a refresh costs at most a quarter of it.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
from pathlib import Path

import torch

from rodpo_dist.config import load_config
from rodpo_dist.data import TrainingContexts, load_dataset, load_split
from rodpo_dist.data.prepare import prepare
from rodpo_dist.model import make_model
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.pool import CandidatePool


def measure(config: str, overrides: list[str], k: int, batch_size: int) -> None:
    cfg = load_config(config, overrides)
    data = load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
    torch.manual_seed(0)
    model = make_model(cfg, data, torch.device("cpu")).eval()
    table = model.item_encoder.item_table(cfg.eval.item_chunk)
    split = load_split(data.dir, "train")
    n, d = data.manifest.num_items, cfg.model.hidden
    print(f"{data.manifest.name}: {n:,} items, {len(split.users):,} training sequences, d={d}, K={k}, "
          f"{torch.get_num_threads()} threads")
    print("| positions | contexts | refresh s | GFLOP/s | pool MiB | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for positions in ("last", "all"):
        contexts = TrainingContexts.from_split(split, positions, cfg.model.max_len)
        pool = CandidatePool(contexts, k)
        stats = pool.refresh(model, table, step=0, batch_size=batch_size, rt=Runtime(torch.device("cpu")))
        flops = 2 * len(contexts) * n * d
        print(f"| {positions} | {len(contexts):,} | {stats.seconds:.1f} | {flops / stats.seconds / 1e9:.0f} | "
              f"{stats.size_mb:.0f} | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--items", type=int, help="generate a synthetic catalog of this many items")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512, help="training windows per scoring batch")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, load {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.items is None:
        measure(args.config, args.overrides, args.k, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"data.synthetic.num_items={args.items}", f"data.synthetic.num_users={args.users}",
                     f"data.prepared_dir={tmp}/data", *args.overrides]
        cfg = load_config(args.config, overrides)
        prepare(cfg.data, cfg.data.prepared_dir, progress=False)
        measure(args.config, overrides, args.k, args.batch_size)


if __name__ == "__main__":
    main()
