"""The training skeleton both stages share: run folder and resume, the epoch loop of optimizer steps
(each exactly `grad_accum` forward/backward passes on every rank), logging, checkpoints,
validation with selection of `best`, preemption, and the final report.

A stage is a `Recipe`: it builds its model and engine, cuts each epoch into per-step groups of
micro-batches, and runs one micro-batch forward and backward. The skeleton divides every step's
summed loss by the epoch's mean number of loss units (targets or contexts) per step, so every unit
of the epoch weighs the same whatever the batching, a 2-rank run equals a 1-rank run with the same
global batch, and accumulation equals a bigger batch.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch
import yaml

from rodpo_dist.config import CONFIG_FILE, Config, StageConfig
from rodpo_dist.data.dataset import PreparedDataset, load_dataset
from rodpo_dist.model import SASRec, make_model, optimizer_param_groups
from rodpo_dist.runtime import Preemption, Runtime, seed_everything
from rodpo_dist.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from rodpo_dist.train.engine import Engine, StepSettings, build_engine
from rodpo_dist.train.optim import build_optimizer, build_scheduler
from rodpo_dist.train.run_dir import open_run, run_folder
from rodpo_dist.train.run_log import RunLog
from rodpo_dist.train.selection import evaluate_splits, report_best, track_best

Results = dict[str, dict[str, float]]


class Recipe(ABC):
    """One training stage. Subclasses set `label`, build `self.model` in `__init__` (after calling
    `super().__init__`), then call `self.build_engine(...)`, and implement the abstract methods."""

    label: str
    """Name of the trained model in reports (`backbone`, a strategy)."""
    stat_names: tuple[str, ...]
    """Per-unit statistics `micro_step` returns (as sums over its units)."""
    report_last: bool = False
    """Also report the weights the run ended with (beside the validation-selected `best`)."""

    def __init__(self, cfg: Config, stage: StageConfig) -> None:
        self.cfg, self.stage = cfg, stage
        self.rt = Runtime.create(cfg.runtime.device)
        self.run_dir = run_folder(cfg)
        seed_everything(cfg.runtime.seed)
        self.data: PreparedDataset = load_dataset(cfg.data.prepared_dir, cfg.data.modalities)
        self.model: SASRec = make_model(cfg, self.data, self.rt.device)
        self.autocast = torch.autocast(self.rt.device.type, dtype=torch.bfloat16, enabled=stage.bf16)
        self.engine: Engine
        self.log: RunLog

    def build_engine(self, model: SASRec, steps_per_epoch: int, units_per_epoch: int) -> None:
        """The optimizer, schedule and engine; every loss unit (target, context) of an epoch will weigh
        the same: a step's summed loss is divided by the epoch's mean units per step, not by its own
        count, so batches of long sequences are not down-weighted under length-aware batching."""
        s = self.stage
        self.steps_per_epoch = steps_per_epoch
        self.units_per_step = max(units_per_epoch / steps_per_epoch, 1.0)
        optimizer = build_optimizer(optimizer_param_groups(model, s.weight_decay), s.lr, self.cfg.model.sparse_item_table)
        scheduler = build_scheduler(optimizer, s.warmup_steps, steps_per_epoch * s.epochs, s.decay)
        self.engine = build_engine(self.cfg.runtime, model, optimizer, scheduler, self.rt,
                                   StepSettings(s.batch_size, s.grad_accum, s.grad_clip, s.bf16))

    # ------------------------------------------------------------------ what a stage provides

    @abstractmethod
    def epoch_groups(self, epoch: int) -> Iterator[list[Any]]:
        """This rank's micro-batches of `epoch`, one list per optimizer step (at most grad_accum each)."""

    @abstractmethod
    def units(self, batch: Any) -> int:
        """Loss units (targets, contexts) in a micro-batch: the loss is averaged over them globally."""

    @abstractmethod
    def micro_step(self, batch: Any, scale: float, micro_batches: int) -> dict[str, float]:
        """Forward and `engine.backward` of one micro-batch, its unit-summed loss times `scale` (its
        per-micro-batch terms divided by `micro_batches`); returns `stat_names` summed over units."""

    @abstractmethod
    def filler_step(self) -> None:
        """A zero-weighted forward/backward where this rank's data ran out (keeps ranks in step)."""

    def begin(self, state: TrainState) -> None:
        """Called once before the loop (after resuming)."""

    def before_step(self, state: TrainState) -> None:
        """Called before each optimizer step."""

    def after_step(self, state: TrainState) -> None:
        """Called after each optimizer step."""

    def validate_after_epoch(self, state: TrainState) -> bool:
        return True

    def keep_going(self, state: TrainState) -> bool:
        return True

    def shared_state(self) -> dict[str, Any]:
        """What rank 0 saves for everyone beyond the engine (tensors and plain containers)."""
        return {}

    def rank_state(self) -> dict[str, Any]:
        """What each rank saves for itself beyond the engine."""
        return {}

    def load_state(self, shared: dict[str, Any], own: dict[str, Any]) -> None:
        """Restore `shared_state` / `rank_state` (own is empty when resumed on another rank count)."""

    def final_metrics(self, state: TrainState) -> dict[str, Any]:
        """Extra numbers for the final log record and report (e.g. false-negative rates)."""
        return {}

    # ------------------------------------------------------------------ the skeleton

    def validate(self) -> dict[str, float]:
        return evaluate_splits(self.model, self.data, self.cfg, self.rt, ("valid",), users=self.cfg.eval.valid_users)["valid"]

    def track(self, state: TrainState) -> bool:
        """Validate now; save `best` when the selection metric improves."""
        return track_best(state, self.validate(), self.cfg.eval.metric, self.log, self.checkpoint)

    def checkpoint(self, name: str | None = None) -> None:
        self.state.extra["wall_time_s"] = self._wall_time()
        save_checkpoint(self.run_dir, self.state, self.model, {**self.engine.state_dict(), **self.shared_state()},
                        keep=self.cfg.runtime.keep_checkpoints, name=name, rt=self.rt,
                        rank_trainer={**self.engine.rank_state_dict(), **self.rank_state()},
                        files={CONFIG_FILE: yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)})

    def run(self, resume: str | None = None, overwrite: bool = False,
            preemption: Preemption | None = None) -> Results:
        """Train to the end (or to a preemption: checkpoint, then `{}`); returns {"valid", "test"} of `best`."""
        rt, runtime = self.rt, self.cfg.runtime
        start = open_run(self.run_dir, self.cfg, resume, overwrite, rt)
        self.state = TrainState()
        if start is not None:
            self.state, shared, own = load_checkpoint(start, self.model, rt)
            self.engine.load_state_dict(shared, own)
            self.load_state(shared, own)
        self.log = RunLog(self.run_dir, rt.is_main, runtime.progress)
        state = self.state
        self._clock = (time.time(), state.extra.get("wall_time_s", 0.0))
        if start is not None:
            self.log.drop_after(state.step)
            self.log.log(state.step, {"resumed_from": str(start)}, kind="event")
        self.model.train()
        self.begin(state)
        while state.epoch < self.stage.epochs and self.keep_going(state):
            groups = self.epoch_groups(state.epoch)
            for _ in islice(groups, state.batch_in_epoch):  # resume: skip the steps already taken
                pass
            self.log.bar(self.steps_per_epoch, state.batch_in_epoch,
                         f"{self.run_dir.name} epoch {state.epoch + 1}/{self.stage.epochs}")
            tic, seen = time.perf_counter(), 0
            for _ in range(state.batch_in_epoch, self.steps_per_epoch):  # the same count on every rank
                self.before_step(state)
                group = next(groups, [])
                sums = self._step(group)
                state.step += 1
                state.batch_in_epoch += 1
                seen += sum(len(b) for b in group)
                if state.step % runtime.log_every == 0:
                    stats = self._global_means(sums)
                    stats |= {"seq_per_s": self._sum(seen) / (time.perf_counter() - tic)}
                    self.log.log(state.step, stats)
                self.log.advance({"loss": sums.get("loss", 0.0) / max(sums.get("units", 1), 1)})
                self.after_step(state)
                if state.step % runtime.checkpoint_every == 0:
                    self.checkpoint()
                if preemption is not None and preemption.requested(rt):
                    self.checkpoint()
                    self.log.log(state.step, {"preempted": True}, kind="event")
                    self.log.close()
                    return {}
            state.epoch += 1
            state.batch_in_epoch = 0
            if self.validate_after_epoch(state):
                self.track(state)
            self.checkpoint()
        self.log.close_bar()
        return report_best(self.model, self.run_dir, self.data, self.cfg, rt, self.log, state.step, self.label,
                           self.final_metrics(state) | {"wall_time_s": round(self._wall_time(), 1)},
                           last=self.report_last)

    def _wall_time(self) -> float:
        """Seconds this run has taken so far, over all its sessions (resumes add up)."""
        started, before = self._clock
        return before + time.time() - started

    def _step(self, group: list[Any]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (fillers up to grad_accum)."""
        counts = [self.units(b) for b in group]
        scale = self.rt.world_size / self.units_per_step  # engines average gradients over ranks
        sums = dict.fromkeys(self.stat_names, 0.0) | {"units": float(sum(counts))}
        for batch in group:
            for key, value in self.micro_step(batch, scale, len(group)).items():
                sums[key] += value
        for _ in range(self.stage.grad_accum - len(group)):
            self.filler_step()
        self._check_finite(sums)
        sums["grad_norm"] = self.engine.step()
        sums["lr"] = self.engine.lr
        return sums

    def _check_finite(self, sums: dict[str, float]) -> None:
        """Stop before an optimizer step whose loss is NaN or inf on any rank (a collective): the
        weights stay as the last step left them, and the last checkpoint is usable."""
        bad = self._sum(0.0 if all(math.isfinite(v) for v in sums.values()) else 1.0)
        if bad:
            step = self.state.step + 1
            raise FloatingPointError(
                f"{self.run_dir}: the loss is not finite at step {step} (epoch {self.state.epoch + 1}) on {bad:.0f} "
                f"rank(s); stopped before that step's update. Look for inf or NaN inputs (`rodpo data verify`), "
                f"or lower the learning rate; `--resume auto` continues from the last checkpoint")

    def _sum(self, value: float) -> float:
        return float(self.rt.sum(torch.tensor(float(value), dtype=torch.float64, device=self.rt.device)))

    def _global_means(self, sums: dict[str, float]) -> dict[str, float]:
        """Per-unit means over every rank's micro-batches of the step (a collective)."""
        names = [*self.stat_names, "units"]
        totals = self.rt.sum(torch.tensor([sums[n] for n in names], dtype=torch.float64, device=self.rt.device))
        units = max(float(totals[-1]), 1.0)
        return {n: float(v) / units for n, v in zip(self.stat_names, totals)} | {
            "grad_norm": sums["grad_norm"], "lr": sums["lr"]}


def steps_per_epoch(samples_per_rank: int, stage: StageConfig) -> int:
    """Optimizer steps of an epoch when the busiest rank holds `samples_per_rank` samples."""
    return math.ceil(samples_per_rank / (stage.batch_size * stage.grad_accum))


def run_stage(cfg: Config, resume: str | None = None, overwrite: bool = False,
              preemption: Preemption | None = None) -> Results:
    """Run the stage `cfg.stage` names."""
    if cfg.stage == "pretrain":
        from rodpo_dist.train.pretrain import Pretraining as recipe
    else:
        from rodpo_dist.train.align import Alignment as recipe
    return recipe(cfg).run(resume, overwrite, preemption)

