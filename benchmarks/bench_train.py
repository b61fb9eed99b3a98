"""Backbone throughput: pretraining steps on a prepared dataset, and full-ranking evaluation over a
large synthetic catalog. Prints sequences/s (users/s) and peak resident memory.

  python benchmarks/bench_train.py pretrain --config configs/beauty.yaml --steps 40 [--profile 12] [--old-ce]
  python benchmarks/bench_train.py evaluate --items 1000000 --users 20000
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time

import torch

from rodpo_dist.config import load_config
from rodpo_dist.data import sequence_loader
from rodpo_dist.data.prepare import prepare
from rodpo_dist.model import optimizer_param_groups
from rodpo_dist.train.losses import next_item_loss
from rodpo_dist.runtime import Runtime
from rodpo_dist.data import load_dataset
from rodpo_dist.model import make_model
from rodpo_dist.train.selection import evaluate_splits


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_pretrain(config: str, steps: int, overrides: list[str], profile: int = 0, old_ce: bool = False) -> None:
    """Timed pretraining steps; `profile`: also print the top ops by self CPU time over the timed steps;
    `old_ce`: the CE of before issue 12 (each item chunk's logsumexp checkpointed and recomputed)."""
    if old_ce:
        import sys
        from pathlib import Path

        from rodpo_dist.train import losses

        sys.path.insert(0, str(Path(__file__).parent))
        from bench_time_to_quality import checkpointed_log_partition

        losses.log_partition = checkpointed_log_partition
    cfg = load_config(config, overrides)
    data = load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
    model = make_model(cfg, data, torch.device("cpu"))
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, 0.0), lr=cfg.pretrain.lr)
    loader = sequence_loader(data.dir, "train", cfg.pretrain.batch_size, cfg.model.max_len + 1,
                             shuffle_buffer=cfg.data.shuffle_buffer)
    seen, tic, warm = 0, 0.0, 3
    profiler = torch.profiler.profile() if profile else None
    for i, batch in enumerate(loader):
        if i == warm:
            seen, tic = 0, time.perf_counter()
            if profiler:
                profiler.__enter__()
        ce_sum, aux = next_item_loss(model, batch["seq"], cfg)
        tokens = ((batch["seq"][:, :-1] > 0) & (batch["seq"][:, 1:] > 0)).sum()
        (ce_sum / tokens + cfg.moe.aux_weight * aux).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(batch["seq"])
        if i + 1 == warm + steps:
            break
    seconds = time.perf_counter() - tic
    if profiler:
        profiler.__exit__(None, None, None)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile))
    print(f"pretrain {data.manifest.name}: {steps} steps of batch {cfg.pretrain.batch_size}, "
          f"{seen / seconds:,.0f} sequences/s, {seconds / steps * 1000:.0f} ms/step, "
          f"peak RSS {peak_gib():.2f} GiB (moe={cfg.moe.enabled}, modalities={cfg.data.modalities})")


def bench_evaluate(items: int, users: int, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("configs/demo.yaml", [f"data.synthetic.num_items={items}",
                                                f"data.synthetic.num_users={users}", f"data.prepared_dir={tmp}/data",
                                                "eval.batch_size=1024", *overrides])
        prepare(cfg.data, cfg.data.prepared_dir, progress=False)
        data = load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
        model = make_model(cfg, data, torch.device("cpu"))
        tic = time.perf_counter()
        table = model.item_encoder.item_table(cfg.eval.item_chunk)
        table_s = time.perf_counter() - tic
        tic = time.perf_counter()
        metrics = evaluate_splits(model, data, cfg, Runtime(torch.device("cpu")), ("test",))["test"]
        seconds = time.perf_counter() - tic
        print(f"evaluate: {items:,} items x {users:,} users, item table {table_s:.1f} s "
              f"({table.numel() * 4 / 2**20:.0f} MiB), full ranking {seconds:.1f} s = {users / seconds:,.0f} users/s, "
              f"peak RSS {peak_gib():.2f} GiB (ndcg@10 of an untrained model: {metrics['ndcg@10']:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pretrain")
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N ops by self CPU time")
    p.add_argument("--old-ce", action="store_true", help="the checkpointed CE of before issue 12 (baseline)")
    p.add_argument("overrides", nargs="*")
    e = sub.add_parser("evaluate")
    e.add_argument("--items", type=int, default=1_000_000)
    e.add_argument("--users", type=int, default=20_000)
    e.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    if args.what == "pretrain":
        bench_pretrain(args.config, args.steps, args.overrides, args.profile, args.old_ce)
    else:
        bench_evaluate(args.items, args.users, args.overrides)


if __name__ == "__main__":
    main()
