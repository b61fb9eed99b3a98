"""Does a cheaper candidate pool align as well as the exact one? RoDPO from the same backbones with
the exact full-catalog pool refreshed over every context (`pool.scope: all, pool.index: exact`, the
baseline) and with the cheaper pools: just in time (`scope: upcoming`), an IVF index (`index: ivf`)
and both; test metrics with paired bootstrap intervals against the exact pool, users pooled over seeds.

  python benchmarks/bench_pool_quality.py --config configs/demo.yaml --seeds 0 1 2

Runs go through the study's runner (`rodpo study` folders under `runtime.run_dir`, found again and
reused: a finished run is only re-evaluated). Printed per pool: test NDCG@5 / NDCG@10 (mean ± std
over seeds), the change against the exact pool with its 95% interval, the seconds spent refreshing
per run and the contexts each refresh scored, the share of the drawn negatives the user likes (the
synthetic catalog knows it) and the alignment's wall time.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from rodpo_dist.config import load_config
from rodpo_dist.data.manifest import load_manifest
from rodpo_dist.data.prepare import ensure_prepared
from rodpo_dist.study.records import copy_ranks, load_ranks, make_record
from rodpo_dist.study.runner import align_run, backbone_run, command_line, execute, with_overrides
from rodpo_dist.study.stats import paired_bootstrap, per_user
from rodpo_dist.train.run_log import read_metrics

POOLS = {"exact": [], "upcoming": ["pool.scope=upcoming"], "ivf": ["pool.index=ivf"],
         "upcoming+ivf": ["pool.scope=upcoming", "pool.index=ivf"]}
"""Pool settings compared; `exact` (every context, full-catalog scan) is the baseline."""
METRICS = ("ndcg@5", "ndcg@10")


def run_pools(config: str, overrides: list[str], seeds: list[int], out: Path) -> dict[str, list[dict]]:
    """{pool: one record per seed} (each with the refresh log of its run under `pool_log`)."""
    cfg = load_config(config, overrides)
    ensure_prepared(cfg)
    manifest = load_manifest(cfg.data.prepared_dir)
    catalog = {"num_users": manifest.num_users, "num_items": manifest.num_items,
               "num_interactions": manifest.num_interactions}
    found: dict[str, list[dict]] = {name: [] for name in POOLS}
    for seed in seeds:
        backbone = backbone_run(cfg, seed)
        execute(backbone)
        for name, pool in POOLS.items():
            run = align_run(with_overrides(cfg, pool, f"pool {name}"), backbone, "rodpo")
            result, final = execute(run)
            record = make_record(run.cfg, "rodpo", result, final, final.get("wall_time_s", 0.0), command_line(),
                                 run.folder, catalog)
            record["variant"] = name  # the ranks of each pool under their own name
            copy_ranks(run.folder, out, record)
            record["pool_log"] = read_metrics(run.folder, "pool")
            found[name].append(record)
    return found


def table(found: dict[str, list[dict]], out: Path) -> str:
    base = found["exact"]
    rows = ["| pool | test NDCG@5 | test NDCG@10 | NDCG@5 vs exact [95% CI] | NDCG@10 vs exact [95% CI] | "
            "refreshes per run | contexts per refresh | refresh s per run | false-negative share of the negatives | "
            "alignment wall s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, records in found.items():
        cells = [name]
        for metric in METRICS:
            values = np.array([r["test"][metric] for r in records])
            cells.append(f"{values.mean():.4f} ± {values.std():.4f}")
        for metric in METRICS:
            if name == "exact":
                cells.append("")
                continue
            pairs = [(load_ranks(out, r, "test"), load_ranks(out, b, "test")) for r, b in zip(records, base)]
            if any(not np.array_equal(m[0], b[0]) for m, b in pairs):
                raise ValueError(f"pool {name}: evaluated on other users than the exact pool")
            change, lo, hi = paired_bootstrap([per_user(m[1], metric) for m, _ in pairs],
                                              [per_user(b[1], metric) for _, b in pairs])
            cells.append(f"{change:+.2f}% [{lo:+.2f}, {hi:+.2f}]")
        logs = [r["pool_log"] for r in records]
        refreshes = np.mean([len(log) for log in logs])
        contexts = np.mean([e["contexts"] for log in logs for e in log])
        seconds = np.mean([sum(e["pool_refresh_s"] for e in log) for log in logs])
        shares = [r["false_negatives"]["false_negative_rate"] for r in records
                  if "false_negative_rate" in r["false_negatives"]]
        wall = np.mean([r["wall_time_s"] for r in records])
        cells += [f"{refreshes:.0f}", f"{contexts:,.0f}", f"{seconds:.1f}",
                  f"{np.mean(shares):.3f}" if shares else "", f"{wall:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/pool_quality", help="the ranks of every run (for the intervals)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    tic = time.perf_counter()
    found = run_pools(args.config, args.overrides, args.seeds, Path(args.out))
    first = found["exact"][0]
    section = (f"Catalog: {first['num_users']:,} users, {first['num_items']:,} items, "
               f"{first['num_interactions']:,} interactions; seeds {args.seeds}.\n\n"
               f"{table(found, Path(args.out))}\n\n"
               f"Command: `{command_line().replace('rodpo ', 'python benchmarks/bench_pool_quality.py ', 1)}` "
               f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - tic:.0f} s).  \n"
               f"Machine: {platform.processor() or platform.machine()}, load "
               f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at the end.\n")
    print(section)


if __name__ == "__main__":
    main()
