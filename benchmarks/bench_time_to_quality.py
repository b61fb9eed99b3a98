"""Time to quality on Beauty: wall time until validation NDCG@10 first reaches the old settings' best.

  python benchmarks/bench_time_to_quality.py [--config configs/beauty.yaml] [--arms old new new-bf16]

Each arm pretrains from scratch (same seed, same machine) in its own subprocess, one after the
other: `old` is the trainer as it was before issue 12 (plain random batches, so ~86% of the
transformer's positions were padding; the full-softmax CE with each 8192-item chunk checkpointed
and recomputed by autograd, reproduced here as the baseline; validation every 2 epochs; the
shipped Beauty settings of then), `new` the shipped config as it is now, `new-bf16` the same with
bf16 autocast. Printed per arm: the validation curve with wall times, sequences/s, peak RSS, the
time to reach the old arm's best validation NDCG@10 and its ratio to the old arm's, and test
NDCG@10 of the selected checkpoint with its standard error over users.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OLD = ["data.length_window=1", "pretrain.item_chunk=8192", "pretrain.eval_every_epochs=2", "pretrain.epochs=20",
       "pretrain.lr=0.002", "pretrain.patience=3", "pretrain.warmup_steps=100", "pretrain.batch_size=256",
       "model.dropout=0.3", "eval.metric=ndcg@10"]
ARMS = {"old": OLD, "new": [], "new-bf16": ["pretrain.bf16=true"]}


def checkpointed_log_partition(hidden, items, chunk, num_items=None, exclude_padding=True):
    """The CE's log-partition before issue 12: each chunk's logsumexp checkpointed (recomputed in backward)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from rodpo_dist.train.losses import _item_fn

    item_fn, n = _item_fn(items, num_items)

    def chunk_logsumexp(h, ids):
        return torch.logsumexp((h @ item_fn(ids).t()).float(), dim=-1)

    ids = torch.arange(1 if exclude_padding else 0, n + 1, device=hidden.device)
    partial = [checkpoint(chunk_logsumexp, hidden, block, use_reentrant=False) for block in ids.split(chunk)]
    return torch.logsumexp(torch.stack(partial), dim=0)


def run_arm(arm: str, config: str, run_dir: str, overrides: list[str]) -> dict:
    """One pretraining from scratch; returns its curve, speed, peak RSS and test ranks (in the subprocess)."""
    from rodpo_dist.config import load_config
    from rodpo_dist.train import losses
    from rodpo_dist.train.pretrain import Pretraining
    from rodpo_dist.train.run_log import read_metrics

    if arm == "old":
        losses.log_partition = checkpointed_log_partition
    cfg = load_config(config, [*ARMS[arm], *overrides, f"runtime.run_dir={run_dir}", "runtime.progress=false",
                               "runtime.log_every=10"])
    start = time.time()
    result = Pretraining(cfg).run()
    folder = Path(run_dir) / "pretrain"
    valid = [{"seconds": r["time"] - start, "epoch": r["epoch"], "ndcg@10": r["ndcg@10"]}
             for r in read_metrics(folder, "valid")]
    speeds = [r["seq_per_s"] for r in read_metrics(folder, "train")]
    with np.load(folder / "ranks.npz") as z:
        ranks = z["test_ranks"]
    per_user = np.where(ranks < 10, 1 / np.log2(np.minimum(ranks, 10) + 2.0), 0.0)
    return {"valid": valid, "seq_per_s": float(np.median(speeds)), "total_s": time.time() - start,
            "test_ndcg@10": result["test"]["ndcg@10"], "test_se": float(per_user.std() / np.sqrt(len(per_user))),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "overrides": ARMS[arm] + overrides}


def first_reach(valid: list[dict], target: float) -> float | None:
    return next((v["seconds"] for v in valid if v["ndcg@10"] >= target - 1e-12), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/beauty.yaml")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="applied to every arm (e.g. runtime.seed=0)")
    args = parser.parse_args()
    if args.worker:
        arm, run_dir, out = args.worker.split(",")
        Path(out).write_text(json.dumps(run_arm(arm, args.config, run_dir, args.overrides)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, load {Path('/proc/loadavg').read_text().split()[:3]}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            out = Path(tmp) / f"{arm}.json"
            cmd = [sys.executable, __file__, "--config", args.config, "--worker", f"{arm},{tmp}/{arm},{out}",
                   *args.overrides]
            subprocess.run(cmd, check=True)
            results[arm] = json.loads(out.read_text())
    base = results[args.arms[0]]
    target = max(v["ndcg@10"] for v in base["valid"])
    base_time = first_reach(base["valid"], target)
    print(f"target: the {args.arms[0]} arm's best validation NDCG@10 = {target:.5f}, reached at {base_time:.0f} s")
    print("| arm | seq/s | peak RSS GiB | reaches target at (s) | time / old | best valid NDCG@10 | test NDCG@10 ± SE | "
          "total s | settings |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, r in results.items():
        reach = first_reach(r["valid"], target)
        ratio = f"{reach / base_time:.3f}" if reach is not None else "never"
        print(f"| {arm} | {r['seq_per_s']:.0f} | {r['peak_rss_gib']:.2f} | "
              f"{f'{reach:.0f}' if reach is not None else 'never'} | {ratio} | {max(v['ndcg@10'] for v in r['valid']):.5f} | "
              f"{r['test_ndcg@10']:.5f} ± {r['test_se']:.5f} | {r['total_s']:.0f} | {' '.join(r['overrides']) or '(config)'} |")
    for arm, r in results.items():
        curve = ", ".join(f"e{v['epoch']} {v['seconds']:.0f}s {v['ndcg@10']:.4f}" for v in r["valid"])
        print(f"{arm} validation NDCG@10: {curve}")


if __name__ == "__main__":
    main()
