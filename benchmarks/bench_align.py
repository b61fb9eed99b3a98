"""Alignment throughput: optimizer steps/s, contexts/s and candidate-pool refresh time, several
settings side by side in one invocation (each `rodpo align` in its own subprocess, one after the other).

  python benchmarks/bench_align.py --init runs/beauty/pretrain/best \
      --arm "before|/path/to/old/checkout|align.epochs=1 ..." --arm "after|.|align.epochs=1 ..."

An arm is `name|repo|overrides`: the checkout whose `rodpo_dist` runs (put first on PYTHONPATH with
its `kernels/` as `rodpo_kernels`, so an older commit runs its own code) and the overrides of
`--config`. Times come from the run's own `metrics.jsonl` (train records every step, pool records
with the refresh time), so every arm is timed the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# runs `rodpo align` and writes the process's peak RSS (KiB) to argv[1]
CHILD = ("import resource, sys; from rodpo_dist.cli import main; code = main(sys.argv[2:]); "
         "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); sys.exit(code)")


def run_arm(repo: Path, config: str, init: str, overrides: list[str], run_dir: Path) -> dict:
    env = os.environ | {"PYTHONPATH": str(repo)}
    rss = run_dir.with_suffix(".rss")
    cmd = [sys.executable, "-c", CHILD, str(rss), "align", "--config", config, "--init", init, *overrides,
           f"runtime.run_dir={run_dir}", "runtime.log_every=1", "runtime.progress=false"]
    tic = time.perf_counter()
    subprocess.run(cmd, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - tic
    [metrics] = list(run_dir.glob("*/metrics.jsonl"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    pools = [r for r in rows if r["kind"] == "pool"]
    gaps = np.diff([r["time"] for r in train])
    refresh_steps = {r["step"] for r in pools}
    valid_steps = {r["step"] for r in rows if r["kind"] == "valid"}
    # time per step without the steps that also refreshed the pool or validated
    plain = [g for r, g in zip(train[1:], gaps) if r["step"] - 1 not in refresh_steps and r["step"] - 1 not in valid_steps]
    contexts = pools[0]["contexts"] if pools and "contexts" in pools[0] else None
    return {"steps": len(train), "step_s": float(np.median(plain)), "wall_s": wall,
            "refresh_s": float(np.mean([p["pool_refresh_s"] for p in pools])) if pools else None,
            "pool_mb": pools[0]["pool_mb"] if pools else None, "contexts": contexts,
            "peak_rss_gib": int(rss.read_text()) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/beauty.yaml")
    parser.add_argument("--init", required=True, help="pretrained checkpoint (absolute path)")
    parser.add_argument("--arm", action="append", required=True, metavar="name|repo|overrides")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {Path('/proc/loadavg').read_text().split()[:3]}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.arm:
            name, repo, overrides = spec.split("|")
            results[name] = run_arm(Path(repo).resolve(), args.config, str(Path(args.init).resolve()),
                                    shlex.split(overrides), Path(tmp) / name)
            results[name]["overrides"] = overrides
    base = results[next(iter(results))]
    print("| arm | steps | s/step (median) | steps/s | vs first | pool refresh s | pool contexts | pool MiB | "
          "peak RSS GiB | settings |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        refresh = f"{r['refresh_s']:.2f}" if r["refresh_s"] is not None else "—"
        print(f"| {name} | {r['steps']} | {r['step_s']:.3f} | {1 / r['step_s']:.2f} | {base['step_s'] / r['step_s']:.2f}x | "
              f"{refresh} | {r['contexts'] or '—'} | {r['pool_mb'] or '—'} | {r['peak_rss_gib']:.2f} | {r['overrides']} |")
    print(f"load after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
