"""Process placement: device, rank and world size, and the few collectives the recipes need."""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def create(cls, device: str = "auto") -> Runtime:
        """Pick the device ('auto': CUDA when present) and read rank/world from torch.distributed."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("runtime.device: 'cuda' requested but no CUDA device is available")
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if device == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())
            return cls(torch.device("cuda", torch.cuda.current_device()), rank, world)
        return cls(torch.device(device), rank, world)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (identity on one process)."""
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(timeout_s: int) -> None:
    """Join the process group described by the launcher's env (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    gloo on CPU, nccl on GPU; a rank that dies makes the others fail within `timeout_s`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


@dataclass
class Preemption:
    """Turns SIGUSR1 / SIGTERM (preemption, time limit, scancel) into a flag checked between steps."""

    signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)
    received: list[int] = field(default_factory=list)

    def install(self) -> Preemption:
        for sig in self.signals:
            signal.signal(sig, lambda signum, _frame: self.received.append(signum))
        return self

    def requested(self, rt: Runtime) -> bool:
        """True on every rank as soon as any rank got a signal (ranks see it at different steps)."""
        flag = torch.tensor([float(bool(self.received))], device=rt.device)  # nccl needs a GPU tensor
        if rt.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
