"""Pretraining recipe: next-item cross-entropy over the whole catalog -> the reference policy.

Reads top to bottom: the model and its engine, the epoch's batches (streamed from the shards,
similar lengths batched together), one micro-batch's loss, and early stopping on `eval.metric`.
The skeleton (`recipe.Recipe`) does the rest: resume, checkpoints, validation, the test report.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from rodpo_dist.config import Config
from rodpo_dist.data import load_split, sequence_loader
from rodpo_dist.train.checkpoint import TrainState
from rodpo_dist.train.losses import next_item_loss, training_proposal
from rodpo_dist.train.recipe import Recipe

FILLER = torch.tensor([[1, 1]])  # a one-target sequence for a pass without data on this rank


def loader_steps(samples: int, world_size: int, num_workers: int, step_batch: int) -> int:
    """Step batches of the busiest rank: each of its readers (DataLoader workers) batches its own
    samples (`data.loader`: reader slot s of R holds ceil((samples - s) / R) of them)."""
    workers = max(1, num_workers)
    readers = world_size * workers
    held = [math.ceil((samples - slot) / readers) for slot in range(readers)]
    return max(sum(math.ceil(held[rank * workers + w] / step_batch) for w in range(workers))
               for rank in range(world_size))


def trim_padding(seq: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row of a left-padded batch (keeps >= 2)."""
    used = (seq != 0).any(0).nonzero()
    first = int(used[0]) if len(used) else 0
    return seq[:, min(first, seq.shape[1] - 2):]


def target_count(seq: torch.Tensor) -> int:
    """Next-item targets in a batch [B, L+1]: a real item after a real item."""
    return int(((seq[:, :-1] > 0) & (seq[:, 1:] > 0)).sum())


class Pretraining(Recipe):
    label = "backbone"
    stat_names = ("loss", "aux")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, cfg.pretrain)
        train = load_split(self.data.dir, "train").sequences
        lengths = np.array([len(s) for s in train])
        self.q = training_proposal(train, self.data.manifest.num_items, cfg.pretrain, self.rt.device)
        steps = loader_steps(len(lengths), self.rt.world_size, cfg.data.num_workers,
                             cfg.pretrain.batch_size * cfg.pretrain.grad_accum)
        targets = int((np.minimum(lengths, cfg.model.max_len + 1) - 1).clip(min=0).sum())  # what collate keeps
        self.build_engine(self.model, steps, targets)

    def epoch_groups(self, epoch: int) -> Iterator[list[torch.Tensor]]:
        """Step batches of batch_size x grad_accum sequences (length-grouped as a whole, so accumulation
        equals a bigger batch), each cut into grad_accum micro-batches."""
        cfg, p = self.cfg, self.cfg.pretrain
        loader = sequence_loader(self.data.dir, "train", p.batch_size * p.grad_accum, cfg.model.max_len + 1,
                                 shuffle=True, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.runtime.seed,
                                 epoch=epoch, num_workers=cfg.data.num_workers, rank=self.rt.rank,
                                 world_size=self.rt.world_size, length_window=cfg.data.length_window)
        for batch in loader:
            yield [trim_padding(micro) for micro in batch["seq"].split(p.batch_size)]

    def units(self, batch: torch.Tensor) -> int:
        return target_count(batch)

    def micro_step(self, batch: torch.Tensor, scale: float, micro_batches: int) -> dict[str, float]:
        with self.autocast:
            ce_sum, aux = next_item_loss(self.engine.trainee, batch.to(self.rt.device), self.cfg, self.q)
        self.engine.backward(ce_sum * scale + self.cfg.moe.aux_weight * aux / micro_batches)
        return {"loss": float(ce_sum.detach()), "aux": float(aux.detach()) * self.units(batch)}

    def filler_step(self) -> None:
        with self.autocast:
            ce_sum, aux = next_item_loss(self.engine.trainee, FILLER.to(self.rt.device), self.cfg, self.q)
        self.engine.backward((ce_sum + aux) * 0.0)

    def validate_after_epoch(self, state: TrainState) -> bool:
        return state.epoch % self.cfg.pretrain.eval_every_epochs == 0 or state.epoch == self.cfg.pretrain.epochs

    def keep_going(self, state: TrainState) -> bool:
        return state.bad_evals < self.cfg.pretrain.patience

    def track(self, state: TrainState) -> bool:
        improved = super().track(state)
        state.bad_evals = 0 if improved else state.bad_evals + 1
        return improved

    def final_metrics(self, state: TrainState) -> dict[str, Any]:
        """Whether the run stopped early (patience) or hit the epoch cap, in words for the report."""
        p, metric = self.cfg.pretrain, self.cfg.eval.metric
        if not self.keep_going(state):
            return {"stopped": "early", "epochs": state.epoch, "stop_reason":
                    f"Stopped early after epoch {state.epoch} of at most {p.epochs}: {p.patience} validations "
                    f"without a better {metric}."}
        return {"stopped": "cap", "epochs": state.epoch, "stop_reason":
                f"Hit the cap of {p.epochs} epochs before {p.patience} validations in a row without a better "
                f"{metric} (the last {state.bad_evals} did not improve on the best, at step {state.best_step}). "
                f"More epochs may help: the learning-rate schedule spans pretrain.epochs, so a finished run is "
                f"not extended; train anew with a higher pretrain.epochs (`--overwrite`, or another run_dir)."}


def pretrain(cfg: Config, resume: str | None = None, overwrite: bool = False, preemption=None):
    """Train the backbone; returns {"valid": ..., "test": ...} metrics of the best checkpoint."""
    return Pretraining(cfg).run(resume, overwrite, preemption)
