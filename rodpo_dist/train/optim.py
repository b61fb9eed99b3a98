"""Optimizer and learning-rate schedule (linear warm-up, then cosine / linear decay or constant).

With `model.sparse_item_table` the item ID table's gradient is a sparse tensor over the rows a step
used (sampled negatives, targets, inputs): `LazyAdamW` updates only those rows (their moments and
weights), so a step costs what it touches, not the catalog. Dense parameters get exactly AdamW.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class LazyAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) that also takes sparse gradients, updating only their rows.

    Dense gradients: the same update as `torch.optim.AdamW`. Sparse gradients (COO, e.g. from
    `nn.Embedding(sparse=True)`): the rows present in the gradient get the AdamW update of their own
    moments with the global bias correction; rows absent keep their weights and moments ("lazy"
    Adam, as TensorFlow's LazyAdam and `torch.optim.SparseAdam`).
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                c1, c2 = 1 - b1**step, 1 - b2**step
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    if not len(rows):
                        continue
                    w, m, v = p[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows]
                else:
                    values, w, m, v = grad, p, state["exp_avg"], state["exp_avg_sq"]
                w.mul_(1 - lr * wd)
                m.lerp_(values, 1 - b1)
                v.mul_(b2).addcmul_(values, values, value=1 - b2)
                w.addcdiv_(m, (v / c2).sqrt_().add_(eps), value=-lr / c1)
                if grad.is_sparse:
                    p[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows] = w, m, v


def build_optimizer(groups: list[dict[str, Any]], lr: float, sparse: bool) -> torch.optim.Optimizer:
    """`torch.optim.AdamW`, or `LazyAdamW` where the model has a sparse item table."""
    return LazyAdamW(groups, lr=lr) if sparse else torch.optim.AdamW(groups, lr=lr)


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
