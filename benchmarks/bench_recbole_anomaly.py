"""RecBole's SASRec with autograd anomaly detection on (as RecBole 1.2.1 ships it) and off, side by side.

  OMP_NUM_THREADS=1 python benchmarks/bench_recbole_anomaly.py --config configs/beauty.yaml --variant defaults

RecBole 1.2.1's `sine.py` turns `torch.autograd.set_detect_anomaly(True)` on when any sequential
model is imported (`bench_peers.import_recbole`), so its SASRec trains in PyTorch's debugging mode.
This measures what that costs, on the split, model and optimizer of `bench_peers.py`: RecBole's own
`Trainer._train_epoch` over the same first `--batches` training batches, then its `_valid_epoch`
over the whole validation split, with the mode on and off in turn (`--rounds` times, on first),
from the same initial weights and optimizer state each time. Prints seconds per training batch and
per validation pass, each mode's mean, and the ratio off / on: the factor by which the RecBole times
of runs made with the mode on overstate RecBole without it. Peak memory: the process's peak RSS
(both modes share it).
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_peers as peers  # noqa: E402  (the benchmark whose RecBole runs this corrects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--variant", default="defaults", choices=peers.VARIANTS)
    parser.add_argument("--batches", type=int, default=16, help="training batches per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per mode, alternating, on first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rodpo_dist.config import load_config
    from rodpo_dist.data.export_recbole import export_recbole
    from rodpo_dist.data.prepare import ensure_prepared

    cfg = load_config(args.config, args.overrides)
    ensure_prepared(cfg)
    name = cfg.data.name or Path(cfg.data.prepared_dir).name
    work = Path(tempfile.mkdtemp(prefix="recbole-anomaly-"))
    export_recbole(cfg.data.prepared_dir, work / "atomic" / name, name)
    os.chdir(work)  # RecBole writes log/ into the working directory
    settings = peers.recbole_settings(args.variant, cfg.model, cfg.model.max_len, tuple(cfg.eval.ks))
    split = peers.recbole_split(work / "atomic", name, settings, cfg.runtime.seed)
    rb = peers.import_recbole()
    model = rb["SASRec"](split.config, split.train.dataset)
    trainer = rb["Trainer"](split.config, model)
    start = copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict())
    batches = list(islice(split.train, args.batches))
    print(f"machine: {peers.machine()}")
    print(f"{name}, RecBole SASRec `{args.variant}`: {len(batches)} training batches of "
          f"{split.config['train_batch_size']} (of {len(split.train)} per epoch), validation over "
          f"{len(split.valid.dataset.inter_feat)} users", flush=True)

    seconds: dict[bool, dict[str, list[float]]] = {on: {"train": [], "valid": []} for on in (True, False)}
    for round_ in range(args.rounds):
        for on in (True, False):
            model.load_state_dict(start[0])
            trainer.optimizer.load_state_dict(start[1])
            torch.autograd.set_detect_anomaly(on)
            tic = time.perf_counter()
            trainer._train_epoch(batches, epoch_idx=round_)
            seconds[on]["train"].append((time.perf_counter() - tic) / len(batches))
            tic = time.perf_counter()
            trainer._valid_epoch(split.valid)
            seconds[on]["valid"].append(time.perf_counter() - tic)
            print(f"round {round_ + 1}, anomaly detection {'on ' if on else 'off'}: "
                  f"{seconds[on]['train'][-1]:.3f} s per training batch, {seconds[on]['valid'][-1]:.1f} s "
                  "per validation", flush=True)
    torch.autograd.set_detect_anomaly(False)

    steps = len(split.train)
    epoch = {on: steps * np.mean(seconds[on]["train"]) + np.mean(seconds[on]["valid"]) for on in (True, False)}
    print(f"\n| anomaly detection | s per training batch | s per validation | s per epoch ({steps} batches "
          "+ validation) |\n|---|---|---|---|")
    for on in (True, False):
        print(f"| {'on (as shipped)' if on else 'off'} | {np.mean(seconds[on]['train']):.3f} | "
              f"{np.mean(seconds[on]['valid']):.1f} | {epoch[on]:.0f} |")
    print(f"\nratio off / on: training {np.mean(seconds[False]['train']) / np.mean(seconds[True]['train']):.3f}, "
          f"validation {np.mean(seconds[False]['valid']) / np.mean(seconds[True]['valid']):.3f}, "
          f"epoch {epoch[False] / epoch[True]:.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
