"""One distributed entry point for pretraining and alignment (the stage comes from the config).

  python launch/train.py --config configs/demo.yaml [--resume auto] [key.sub=value ...]
  torchrun --nproc_per_node 2 launch/train.py --config configs/demo.yaml
  ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 launch/train.py \
      --config configs/demo.yaml --engine accelerate
  deepspeed --num_gpus 2 launch/train.py --config configs/demo.yaml --engine deepspeed \
      runtime.deepspeed_config=configs/deepspeed/zero2.json
  sbatch launch/slurm/train_torchrun.sbatch --config configs/demo.yaml     (see launch/slurm/README.md)

Joins the process group from the launcher's environment (gloo on CPU, nccl on GPU), prepares
the dataset when `data.prepared_dir` holds none yet (rank 0; the others wait), turns
SIGUSR1/SIGTERM into a checkpoint-and-exit between steps (the job is then requeued and continues
with `--resume auto`), and runs the recipe with the engine of `runtime.engine` (plain,
accelerate or deepspeed; see rodpo_dist/train/engine.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from rodpo_dist.config import Config, ConfigError, load_config
from rodpo_dist.runtime import Preemption, init_distributed


def prepare_if_missing(cfg: Config) -> None:
    """Rank 0 prepares `data.prepared_dir` when it holds no dataset yet, the others wait for it; a
    dataset already there must fit the config's data settings (`rodpo_dist.data.prepare.ensure_prepared`).

    The wait is a gloo barrier of its own with a long timeout (preparing a large catalog can take
    longer than `runtime.dist_timeout_s`); it still ends at once if rank 0 dies.
    """
    from rodpo_dist.data.prepare import MANIFEST_FILE, ensure_prepared

    dist = torch.distributed
    if (Path(cfg.data.prepared_dir) / MANIFEST_FILE).is_file():
        ensure_prepared(cfg)
        return
    waiting = dist.new_group(backend="gloo", timeout=timedelta(hours=6)) if dist.is_initialized() else None
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"train.py: preparing {cfg.data.prepared_dir} (data.source={cfg.data.source})", file=sys.stderr)
        ensure_prepared(cfg, progress=False)
    if waiting is not None:
        dist.barrier(group=waiting)
        dist.destroy_process_group(waiting)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", required=True)
    parser.add_argument("--resume", default=None, help="'auto' or a checkpoint path")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in the run folder")
    parser.add_argument("--engine", choices=["plain", "accelerate", "deepspeed"], default=None)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)
    overrides = [*args.overrides, *([f"runtime.engine={args.engine}"] if args.engine else [])]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 2
    preemption = Preemption().install()
    init_distributed(cfg.runtime.dist_timeout_s)
    prepare_if_missing(cfg)
    from rodpo_dist.train.recipe import run_stage

    run_stage(cfg, resume=args.resume, overwrite=args.overwrite, preemption=preemption)
    return 0


def exit_process(code: int) -> None:
    """Exit a distributed worker once every rank is done, without C++ teardown.

    gloo's worker threads occasionally abort a finished rank while the process group or the
    interpreter is torn down ("terminate called without an active exception", SIGABRT: once in 12
    2-rank CPU runs under load here, with `destroy_process_group()` called), which fails a job whose
    work is complete. So after a last barrier (every rank has finished all its collectives and
    written its files) the process flushes its streams and leaves with `os._exit`.
    """
    if not torch.distributed.is_initialized():
        sys.exit(code)
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
