"""The learning-rate schedule: linear warm-up to the peak (no step at lr 0), then cosine / linear decay
over the steps after warm-up, reaching 0 after the last one."""

from __future__ import annotations

import math

import pytest
import torch

from rodpo_dist.train.optim import build_scheduler


def _factors(warmup: int, total: int, decay: str) -> list[float]:
    """The lr factor of each of `total` steps, then the one after the last step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, warmup, total, decay)
    factors = []
    for _ in range(total + 1):
        factors.append(optimizer.param_groups[0]["lr"] / 2.0)  # the lr of the step about to be taken
        optimizer.step()
        scheduler.step()
    return factors


def _cosine(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("decay, after_warmup", [("cosine", _cosine), ("linear", lambda p: 1 - p),
                                                 ("none", lambda p: 1.0)])
def test_warmup_then_decay_over_the_remaining_steps(decay, after_warmup):
    """warmup 4 of 10 steps: 1/4, 2/4, 3/4, 4/4, then progress (step - 4) / 6 for steps 4..10."""
    expected = [0.25, 0.5, 0.75, 1.0] + [after_warmup(s / 6) for s in range(0, 7)]
    assert _factors(4, 10, decay) == pytest.approx(expected, abs=1e-12)
    assert expected[-1] == (1.0 if decay == "none" else pytest.approx(0.0, abs=1e-12))
