"""Data-parallel scaling: measured time per step on 1 and 2 processes, and communication per step.

  python benchmarks/bench_scaling.py [--epochs 3] [--items 10000000] [key.sub=value ...]

Part 1 trains the demo config (pretraining, plain engine) with the same global batch on 1
process and on 2 gloo processes under torchrun, side by side in one run, and prints the median
time per optimizer step (from the per-step timestamps of `metrics.jsonl`, first epoch skipped)
and the ratio. Part 2 computes, for N nodes (one rank each), the bytes each rank sends per step
for a catalog of `--items` items with the demo model's shapes: the ring all-reduce of the dense
gradients (the item ID table dominates: the full softmax touches every row), the MoE all-to-all
(dispatch + combine, forward + backward) and the all-gather that merges the sharded top-K lists
(pool refresh, amortised over `pool.refresh_steps`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_seconds(launcher: list[str], run_dir: Path, data_dir: Path, batch: int, epochs: int,
                 overrides: list[str], threads: int) -> float:
    """Median seconds per optimizer step after the first epoch (evaluation steps excluded)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu"}
    cmd = [*launcher, str(REPO / "launch" / "train.py"), "--config", str(CONFIG), f"data.prepared_dir={data_dir}",
           f"runtime.run_dir={run_dir}", f"pretrain.batch_size={batch}", f"pretrain.epochs={epochs}",
           "pretrain.eval_every_epochs=1000", "runtime.log_every=1", "runtime.progress=false",
           "runtime.checkpoint_every=100000", *overrides]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    records = [json.loads(x) for x in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    per_epoch = len(train) // epochs
    times = [b["time"] - a["time"] for a, b in zip(train[per_epoch:], train[per_epoch + 1:])]
    return statistics.median(times)


def communication(nodes: int, items: int, hidden: int, layers: int, tokens_per_rank: int, top_k: int,
                  contexts: int, pool_k: int, refresh_steps: int, moe_layers: int) -> dict[str, float]:
    """Bytes sent per rank per optimizer step (fp32 activations and gradients, int64 ids)."""
    share = (nodes - 1) / nodes
    dense_params = items * hidden + layers * (4 * hidden * hidden + 2 * hidden * 4 * hidden)
    return {
        "allreduce_dense_grads": 2 * share * dense_params * 4,  # ring: reduce-scatter + all-gather
        "all_to_all_experts": 4 * moe_layers * tokens_per_rank * top_k * hidden * 4 * share,
        "pool_topk_gather": (nodes - 1) * contexts * pool_k * (4 + 8) / refresh_steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="global batch (sequences per step)")
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        subprocess.run([sys.executable, "-m", "rodpo_dist.cli", "data", "prepare", "--config", str(CONFIG),
                        f"data.prepared_dir={data}", "runtime.progress=false", *args.overrides],
                       cwd=REPO, check=True, capture_output=True)
        one = step_seconds([sys.executable], tmp / "one", data, args.batch, args.epochs, args.overrides, threads=2)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(_free_port())]
        two = step_seconds(torchrun, tmp / "two", data, args.batch // 2, args.epochs, args.overrides, threads=1)
    cores = os.cpu_count()
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; demo config, global batch "
          f"{args.batch}, {args.epochs} epochs (first skipped)")
    print("| processes | threads each | s / step | vs 1 process |\n|---|---|---|---|")
    print(f"| 1 | 2 | {one:.4f} | 1.00x |")
    print(f"| 2 (torchrun, gloo) | 1 | {two:.4f} | {one / two:.2f}x |")

    print(f"\nCommunication per rank per step, {args.items:,} items, hidden 64, 2 layers, MoE in both FFN blocks "
          f"(top-2), batch 256 x 50 tokens per rank, pool K=100 over 1M contexts refreshed every 50 steps:")
    print("| nodes | all-reduce dense grads | MoE all-to-all | pool top-K gather |\n|---|---|---|---|")
    for nodes in (2, 4, 8, 16, 64):
        c = communication(nodes, args.items, 64, 2, 256 * 50, 2, 1_000_000, 100, 50, 2)
        print(f"| {nodes} | {c['allreduce_dense_grads'] / 2**30:.2f} GiB | {c['all_to_all_experts'] / 2**20:.1f} MiB "
              f"| {c['pool_topk_gather'] / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
