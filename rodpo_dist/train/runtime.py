"""Process placement: device, rank and world size, and the few collectives the recipes need."""

from __future__ import annotations

import random
from dataclasses import dataclass

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
