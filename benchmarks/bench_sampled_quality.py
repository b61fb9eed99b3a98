"""Does the sampled softmax keep the backbone's quality? Full CE against sampled sizes, one table.

  python benchmarks/bench_sampled_quality.py --config configs/beauty.yaml --sizes 256 1024 4096 --seeds 0

Each backbone is a plain `rodpo pretrain` of the config (until validation stops improving, as the
config says), one run folder per (loss, size, seed) under `--runs` (a rerun skips finished runs).
`--extra` overrides go to the sampled runs only (default: popularity proposal, sparse item table).
Prints validation NDCG@10 / HR@10 of the selected checkpoint, the change against full CE with a
paired bootstrap 95% interval over validation users (pooled over seeds), epochs and wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from rodpo_dist.study.stats import paired_bootstrap, per_user
from rodpo_dist.train.run_log import read_metrics


def _run(config: str, run_dir: Path, overrides: list[str], seed: int) -> Path:
    folder = run_dir / "pretrain"
    if not (folder / "report.json").is_file():
        subprocess.run([sys.executable, "-m", "rodpo_dist.cli", "pretrain", "--config", config,
                        f"runtime.run_dir={run_dir}", f"runtime.seed={seed}", "runtime.progress=false", *overrides],
                       check=True)
    return folder


def _summary(folder: Path) -> dict:
    final = read_metrics(folder, "final")[-1]
    ranks = np.load(folder / "ranks.npz")
    return {"ndcg@10": final["valid/ndcg@10"], "hr@10": final["valid/hr@10"], "wall_s": final["wall_time_s"],
            "epochs": final.get("epochs"), "ranks": ranks["valid_ranks"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", default="runs/sampled_quality")
    parser.add_argument("--extra", nargs="*", default=["pretrain.sampling=popularity", "model.sparse_item_table=true"])
    parser.add_argument("--full-run", default="", help="an existing full-CE pretraining run folder of the same config "
                        "and seed (e.g. runs/beauty/pretrain) to reuse instead of training one (one seed)")
    args = parser.parse_args()
    name = Path(args.config).stem
    variants = {"full": ["pretrain.loss=full"]} | {
        f"sampled {n}": ["pretrain.loss=sampled", f"pretrain.num_sampled={n}", *args.extra] for n in args.sizes}
    results = {}
    if args.full_run:
        results["full"] = [_summary(Path(args.full_run))]
        variants.pop("full")
    for label, overrides in variants.items():
        results[label] = [_summary(_run(args.config, Path(args.runs) / name / label.replace(" ", "") / f"s{seed}",
                                        overrides, seed)) for seed in args.seeds]
    print(f"\n{name}, seeds {args.seeds}; machine {platform.machine()}, command: "
          f"python benchmarks/bench_sampled_quality.py {' '.join(sys.argv[1:])}\n")
    print("| loss | valid NDCG@10 | valid HR@10 | NDCG@10 vs full [95% CI] | epochs | wall s |")
    print("|---|---|---|---|---|---|")
    full = results["full"]
    for label, rows in results.items():
        change = "-"
        if label != "full":
            c, lo, hi = paired_bootstrap([per_user(r["ranks"], "ndcg@10") for r in rows],
                                         [per_user(r["ranks"], "ndcg@10") for r in full])
            change = f"{c:+.2f}% [{lo:+.2f}, {hi:+.2f}]"
        mean = lambda key: np.mean([r[key] for r in rows])  # noqa: E731
        epochs = "/".join(str(r["epochs"]) for r in rows)
        print(f"| {label} | {mean('ndcg@10'):.4f} | {mean('hr@10'):.4f} | {change} | {epochs} | {mean('wall_s'):.0f} |")
    summary = {k: [{kk: vv for kk, vv in r.items() if kk != "ranks"} for r in v] for k, v in results.items()}
    print("\n" + json.dumps(summary))


if __name__ == "__main__":
    main()
