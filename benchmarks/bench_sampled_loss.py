"""Pretraining step cost at catalog sizes: full softmax vs sampled softmax, dense vs sparse item table.

  python benchmarks/bench_sampled_loss.py --items 12000 100000 1000000 --steps 6

Per catalog (the synthetic one, Zipf popularity, text + image + attribute features, 20,000 users, or
`--prepared DIR` for an existing dataset), each path runs in its own subprocess on the same batches:
`full` (exact softmax over the catalog, dense table, AdamW), `sampled_dense` (sampled softmax with
`--num-sampled` popularity negatives, dense table, AdamW) and `sampled_sparse` (the same with
`model.sparse_item_table`: row gradients and lazy AdamW). Prints the median seconds per optimizer
step after one warm-up step, the ratio to `full`, the peak RSS of the subprocess, and the item-table
gradient a step produces: rows and MiB, which is what a data-parallel engine exchanges for the
table (dense: all-reduce of the whole table; sparse: all-gather of the rows, `train.engine`).

With `--world 2` each path runs on 2 ranks (`torch.distributed.run`, gloo, each rank its own share
of the batches) and the collectives of the optimizer step are measured, not computed: the bytes each
rank hands to `all_reduce` and `all_gather` per step (the payload; a ring moves about 2 (W-1)/W of an
all-reduce's payload and (W-1) x an all-gather's) and the seconds spent in them.

  python benchmarks/bench_sampled_loss.py --items 100000 1000000 --steps 4 --world 2 \\
      --paths sampled_dense sampled_sparse
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = {"full": ["pretrain.loss=full", "model.sparse_item_table=false"],
         "sampled_dense": ["pretrain.loss=sampled", "pretrain.sampling=popularity", "model.sparse_item_table=false"],
         "sampled_sparse": ["pretrain.loss=sampled", "pretrain.sampling=popularity", "model.sparse_item_table=true"]}


class CollectiveMeter:
    """Counts the bytes this rank hands to `dist.all_reduce` / `dist.all_gather` and the seconds spent
    in them while `active` (the engine calls them through the module, so wrapping the module's
    functions sees every call)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.bytes, self.seconds, self.active = 0, 0.0, False
        for name in ("all_reduce", "all_gather"):
            setattr(dist, name, self._wrap(getattr(dist, name)))

    def _wrap(self, collective):  # noqa: ANN001, ANN202 (any collective)
        def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not self.active:
                return collective(*args, **kwargs)
            sent = args[1] if collective.__name__ == "all_gather" else args[0]
            self.bytes += sent.numel() * sent.element_size()
            tic = time.perf_counter()
            out = collective(*args, **kwargs)
            self.seconds += time.perf_counter() - tic
            return out
        return counted


def _worker(prepared: str, path: str, steps: int, num_sampled: int) -> dict:
    import torch

    from rodpo_dist.config import load_config
    from rodpo_dist.runtime import init_distributed
    from rodpo_dist.train.pretrain import Pretraining

    init_distributed(600)  # a no-op on one process
    meter = CollectiveMeter()

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config("configs/million.yaml", [f"data.prepared_dir={prepared}", f"runtime.run_dir={run_dir}",
                                                   f"pretrain.num_sampled={num_sampled}", "runtime.progress=false",
                                                   *PATHS[path]])
        recipe = Pretraining(cfg)
        groups = recipe.epoch_groups(0)
        table = recipe.model.item_encoder.id_embedding.weight
        times, rows, sent, waited = [], [], [], []
        for i in range(steps + 1):
            group = next(groups)
            tic = time.perf_counter()
            counts = [recipe.units(b) for b in group]
            scale = 1.0 / recipe.units_per_step
            for batch in group:
                recipe.micro_step(batch, scale, len(group))
            grad = table.grad
            rows.append(int(grad.coalesce().indices().shape[1]) if grad.is_sparse else int((grad != 0).any(1).sum()))
            meter.bytes, meter.seconds, meter.active = 0, 0.0, True
            recipe.engine.step()
            meter.active = False
            if i:  # the first step warms up
                times.append(time.perf_counter() - tic)
                sent.append(meter.bytes)
                waited.append(meter.seconds)
            del counts
        dim = table.shape[1]
        sparse = cfg.model.sparse_item_table
        grad_mib = statistics.median(rows[1:]) * (dim * 4 + 8) / 2**20 if sparse else table.numel() * 4 / 2**20
        return {"s_per_step": statistics.median(times), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "table_rows_with_gradient": int(statistics.median(rows[1:])), "table_grad_mib": grad_mib,
                "items": recipe.data.manifest.num_items, "threads": torch.get_num_threads(),
                "world": recipe.rt.world_size, "collective_mib": statistics.median(sent) / 2**20,
                "collective_s": statistics.median(waited)}


def _prepare(items: int, users: int, root: Path) -> str:
    from rodpo_dist.config import load_config
    from rodpo_dist.data.prepare import ensure_prepared

    cfg = load_config("configs/million.yaml", [f"data.prepared_dir={root}/syn{items}", f"data.synthetic.num_items={items}",
                                               f"data.synthetic.num_users={users}", "runtime.progress=false"])
    ensure_prepared(cfg)
    return cfg.data.prepared_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[12_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--full-steps", type=int, default=2, help="timed steps of the full softmax at >= 1M items")
    parser.add_argument("--num-sampled", type=int, default=4096)
    parser.add_argument("--data-root", default="data_cache/bench_sampled")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="which paths (the ratio column is to the first one run)")
    parser.add_argument("--world", type=int, default=1, help="ranks per path (gloo; > 1: collectives measured)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        prepared, path, steps, num_sampled = args.worker
        result = _worker(prepared, path, int(steps), int(num_sampled))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
        return
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    launch = [sys.executable] if args.world == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.world}"]
    exchange = args.world > 1
    print(f"{args.world} rank(s)")
    print(f"| items | path | s / step | vs {args.paths[0]} | peak RSS GiB | table rows with gradient | table gradient MiB / step |"
          + (" collective payload MiB / step / rank | s in collectives / step |" if exchange else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if exchange else ""))
    for items in args.items:
        prepared = _prepare(items, args.users, Path(args.data_root))
        base = None
        for path in args.paths:
            steps = args.full_steps if path == "full" and items >= 1_000_000 else args.steps
            proc = subprocess.run([*launch, __file__, "--worker", prepared, path, str(steps), str(args.num_sampled)],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(f"| {items:,} | {path} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | | |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            base = base or r["s_per_step"]
            print(f"| {r['items']:,} | {path} | {r['s_per_step']:.3f} | {r['s_per_step'] / base:.3f} | "
                  f"{r['peak_rss_gib']:.2f} | {r['table_rows_with_gradient']:,} | {r['table_grad_mib']:.1f} |"
                  + (f" {r['collective_mib']:.2f} | {r['collective_s']:.3f} |" if exchange else ""), flush=True)


if __name__ == "__main__":
    main()
