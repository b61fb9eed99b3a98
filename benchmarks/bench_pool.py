"""Candidate-pool refresh cost: time, pool memory and peak RSS for the last-position and the
all-position contexts, on a prepared dataset (e.g. Beauty) and on a large synthetic catalog; with
`--pools`, the cheaper pools against the exact one.

  python benchmarks/bench_pool.py --config configs/beauty.yaml
  python benchmarks/bench_pool.py --config configs/demo.yaml --items 1000000 --users 5000
  python benchmarks/bench_pool.py --config configs/beauty.yaml --pools --checkpoint runs/beauty/pretrain/best

With `--items` the synthetic catalog of that size is generated first (in a temporary folder). The
model is untrained unless `--checkpoint` gives its weights (the cost does not depend on them; the
IVF index's recall does). Printed per setting: contexts, the refresh time, the scoring rate
(2 x contexts x items x d / time), the pool's size and the process peak RSS so far. For scale: one
full-softmax training epoch on the same contexts does four such matmuls (scores, recomputed scores,
two gradients), so a refresh costs at most a quarter of it.

`--pools` (contexts of `align.positions`): every refresh scope (`all`: every training context;
`upcoming`: the contexts of the next `pool.refresh_steps` batches of `align.batch_size` sequences)
with every index (`exact`, `ivf` with `pool.ivf_lists` / `pool.ivf_probe`): contexts per refresh,
refresh time, refresh time per training step (a refresh every `pool.refresh_steps` steps), and the
IVF pool's recall@K, the share of the exact pool's items it holds on the same contexts.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
from pathlib import Path

import numpy as np
import torch

from rodpo_dist.config import Config, load_config
from rodpo_dist.data import TrainingContexts, load_dataset, load_split
from rodpo_dist.data.prepare import prepare
from rodpo_dist.model import make_model
from rodpo_dist.model.weights import load_weights
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.pool import CandidatePool


def measure(config: str, overrides: list[str], k: int, batch_size: int, checkpoint: str | None,
            pools: bool) -> None:
    cfg = load_config(config, overrides)
    data = load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
    torch.manual_seed(0)
    model = make_model(cfg, data, torch.device("cpu")).eval()
    if checkpoint:
        load_weights(checkpoint, model)
    with torch.no_grad():
        table = model.item_encoder.item_table(cfg.eval.item_chunk)
    split = load_split(data.dir, "train")
    n, d = data.manifest.num_items, cfg.model.hidden
    if pools:
        compare_pools(cfg, model, table, TrainingContexts.from_split(split, cfg.align.positions, cfg.model.max_len),
                      k, batch_size)
        return
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


def compare_pools(cfg: Config, model: torch.nn.Module, table: torch.Tensor, contexts: TrainingContexts, k: int,
                  batch_size: int) -> None:
    """The table of `--pools`: each scope x index, the IVF pools' recall against the exact ones."""
    steps = cfg.pool.refresh_steps
    upcoming = np.random.default_rng(0).permutation(contexts.num_sequences)[:steps * cfg.align.batch_size]
    index = {"lists": cfg.pool.ivf_lists, "probe": cfg.pool.ivf_probe, "seed": 0}
    print(f"{cfg.align.positions} positions, refresh every {steps} steps of {cfg.align.batch_size} sequences; "
          f"IVF lists {cfg.pool.ivf_lists or 'auto'}, probe {cfg.pool.ivf_probe}")
    print("| scope | index | contexts per refresh | refresh s | refresh s per training step | recall@K vs exact | "
          "peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for scope, sequences in (("all", None), ("upcoming", np.sort(upcoming))):
        chosen = np.arange(contexts.num_sequences) if sequences is None else sequences
        rows = np.concatenate([np.arange(contexts.offsets[i], contexts.offsets[i + 1]) for i in chosen])
        exact = None
        for name, settings in (("exact", None), ("ivf", index)):
            pool = CandidatePool(contexts, k, settings)
            stats = pool.refresh(model, table, step=0, batch_size=batch_size, rt=Runtime(torch.device("cpu")),
                                 sequences=sequences)
            ids = pool.ids[rows].long()
            if exact is None:
                exact, recall = ids, "1 (the reference)"
            else:
                found = (ids[:, :, None] == exact[:, None, :]).any(1) & (exact >= 0)
                recall = f"{found.sum().item() / max((exact >= 0).sum().item(), 1):.3f}"
            print(f"| {scope} | {name} | {len(rows):,} | {stats.seconds:.2f} | {stats.seconds / steps:.3f} | {recall} | "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--items", type=int, help="generate a synthetic catalog of this many items")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512, help="training windows per scoring batch")
    parser.add_argument("--checkpoint", help="model weights (default: untrained)")
    parser.add_argument("--pools", action="store_true", help="the cheaper pools (scope x index) against the exact one")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, load {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.items is None:
        measure(args.config, args.overrides, args.k, args.batch_size, args.checkpoint, args.pools)
        return
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"data.synthetic.num_items={args.items}", f"data.synthetic.num_users={args.users}",
                     f"data.prepared_dir={tmp}/data", *args.overrides]
        cfg = load_config(args.config, overrides)
        prepare(cfg.data, cfg.data.prepared_dir, progress=False)
        measure(args.config, overrides, args.k, args.batch_size, args.checkpoint, args.pools)


if __name__ == "__main__":
    main()
