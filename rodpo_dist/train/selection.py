"""Checkpoint selection on validation only: log the metrics, keep the best as the `best` checkpoint."""

from __future__ import annotations

from typing import Callable

from rodpo_dist.train.checkpoint import TrainState
from rodpo_dist.train.run_log import RunLog


def track_best(state: TrainState, metrics: dict[str, float], metric: str, log: RunLog,
               checkpoint: Callable[..., None]) -> bool:
    """Record validation `metrics`; save `best` when `metric` improves. Returns whether it did."""
    log.log(state.step, {"epoch": state.epoch, **metrics}, kind="valid")
    if metrics[metric] <= state.best_metric:
        return False
    state.best_metric, state.best_step = metrics[metric], state.step
    checkpoint(name="best")
    return True
