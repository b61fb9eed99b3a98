"""Optimizer and learning-rate schedule (linear warm-up, then cosine / linear decay or constant)."""

from __future__ import annotations

import math

import torch


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                    decay: str) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if decay == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
