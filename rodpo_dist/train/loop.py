"""Bookkeeping shared by the training recipes at the end of every optimizer step."""

from __future__ import annotations

from typing import Callable

from rodpo_dist.config import RuntimeConfig
from rodpo_dist.train.checkpoint import TrainState
from rodpo_dist.train.run_log import RunLog
from rodpo_dist.train.runtime import Preemption, Runtime


def end_of_step(state: TrainState, stats: dict[str, float], runtime: RuntimeConfig, log: RunLog,
                checkpoint: Callable[..., None], preemption: Preemption | None, rt: Runtime) -> bool:
    """Log every `runtime.log_every` steps and checkpoint every `runtime.checkpoint_every`.

    Returns True when a preemption was requested: the checkpoint is saved and the run must stop.
    """
    if state.step % runtime.log_every == 0:
        log.log(state.step, stats)
    if state.step % runtime.checkpoint_every == 0:
        checkpoint()
    if preemption is None or not preemption.requested(rt):
        return False
    checkpoint()
    log.log(state.step, {"preempted": True}, kind="event")
    log.close()
    return True


def finish_step(state: TrainState) -> None:
    """Count an optimizer step taken (the data position moves with it)."""
    state.step += 1
    state.batch_in_epoch += 1
