"""Pretraining recipe: next-item cross-entropy over the whole catalog -> the reference policy.

Reads top to bottom: data and model, optimizer and schedule, resume, the epoch loop (gradient
accumulation over micro-batches, periodic checkpoints, validation with early stopping on
`eval.metric`), then the test evaluation of the best checkpoint.
"""

from __future__ import annotations

import math
import time
from itertools import islice
from pathlib import Path
from typing import Iterator

import torch

from rodpo_dist.config import Config, save_config
from rodpo_dist.data import sequence_loader
from rodpo_dist.model import optimizer_param_groups
from rodpo_dist.train.checkpoint import TrainState, load_checkpoint, resolve_resume, save_checkpoint
from rodpo_dist.train.engine import StepSettings, build_engine
from rodpo_dist.train.losses import next_item_loss
from rodpo_dist.train.loop import end_of_step, finish_step
from rodpo_dist.train.optim import build_scheduler
from rodpo_dist.train.run_log import RunLog
from rodpo_dist.train.selection import evaluate_splits, report_best, track_best
from rodpo_dist.train.runtime import Preemption, Runtime, seed_everything
from rodpo_dist.train.setup import load_dataset, make_model


FILLER = torch.tensor([[1, 1]])  # a one-target sequence for a pass without data on this rank


def _groups(batches: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """Micro-batches grouped into optimizer steps (the last group may be short)."""
    while group := list(islice(batches, size)):
        yield group


def pretrain(cfg: Config, resume: str | None = None,
             preemption: Preemption | None = None) -> dict[str, dict[str, float]]:
    """Train the backbone; returns {"valid": ..., "test": ...} metrics of the best checkpoint."""
    p, rt = cfg.pretrain, Runtime.create(cfg.runtime.device)
    run_dir = Path(cfg.runtime.run_dir) / "pretrain"
    seed_everything(cfg.runtime.seed)

    data = load_dataset(cfg)
    model = make_model(cfg, data, rt.device)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, p.weight_decay), lr=p.lr)
    per_rank = math.ceil(data.manifest.num_users / rt.world_size)
    steps_per_epoch = math.ceil(per_rank / (p.batch_size * p.grad_accum))
    scheduler = build_scheduler(optimizer, p.warmup_steps, steps_per_epoch * p.epochs, p.decay)
    engine = build_engine(cfg.runtime, model, optimizer, scheduler, rt,
                          StepSettings(p.batch_size, p.grad_accum, p.grad_clip, p.bf16))

    state = TrainState()
    start = resolve_resume(run_dir, resume)
    if start is not None:
        state, shared, own = load_checkpoint(start, model, rt)
        engine.load_state_dict(shared, own)
    log = RunLog(run_dir, rt.is_main, cfg.runtime.progress)
    if start is not None:
        log.drop_after(state.step)
    if rt.is_main:
        save_config(cfg, run_dir / "config.yaml")
        if start is not None:
            log.log(state.step, {"resumed_from": str(start)}, kind="event")

    def checkpoint(name: str | None = None) -> None:
        save_checkpoint(run_dir, state, model, engine.state_dict(), keep=cfg.runtime.keep_checkpoints,
                        name=name, rank_trainer=engine.rank_state_dict(), rt=rt)

    def validate() -> dict[str, float]:
        return evaluate_splits(model, data, cfg, rt, ("valid",))["valid"]

    autocast = torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=p.bf16)
    model.train()
    while state.epoch < p.epochs and state.bad_evals < p.patience:
        loader = sequence_loader(data.dir, "train", p.batch_size, cfg.model.max_len + 1, shuffle=True,
                                 shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.runtime.seed,
                                 epoch=state.epoch, num_workers=cfg.data.num_workers,
                                 rank=rt.rank, world_size=rt.world_size)
        groups = _groups(iter(loader), p.grad_accum)
        log.bar(steps_per_epoch, state.batch_in_epoch, f"pretrain epoch {state.epoch + 1}/{p.epochs}")
        tic, seen = time.perf_counter(), 0
        for _ in islice(groups, state.batch_in_epoch):  # resume: skip the groups already trained on
            pass
        # every rank takes the same number of steps, each of exactly `grad_accum` forward/backward
        # passes (zero-weighted filler batches where its data ran out): ZeRO-2 reduces and
        # expert parallelism exchanges tokens in every pass, so the counts must match
        for _ in range(state.batch_in_epoch, steps_per_epoch):
            seqs = [b["seq"].to(rt.device) for b in next(groups, [])]
            local_tokens = sum((((s[:, :-1] > 0) & (s[:, 1:] > 0)).sum() for s in seqs), torch.zeros((), device=rt.device))
            tokens = rt.sum(local_tokens.float())
            weight = rt.world_size / tokens.clamp(min=1)  # engines average gradients over ranks
            totals = torch.zeros(2, device=rt.device)  # summed CE, mean aux loss over this rank's micro-batches
            for i in range(p.grad_accum):
                with autocast:
                    ce_sum, aux = next_item_loss(engine.trainee, seqs[i] if i < len(seqs) else FILLER.to(rt.device), cfg)
                if i >= len(seqs):
                    engine.backward((ce_sum + aux) * 0.0)
                    continue
                engine.backward(ce_sum * weight + cfg.moe.aux_weight * aux / len(seqs))
                totals += torch.stack([ce_sum.detach().float(), aux.detach().float() / len(seqs)])
            grad_norm = engine.step()
            finish_step(state)
            seen += sum(len(s) for s in seqs)
            ce_total, aux_total = rt.sum(totals).tolist()  # what the global batch saw
            stats = {"loss": ce_total / float(tokens.clamp(min=1)), "aux": aux_total / rt.world_size,
                     "grad_norm": grad_norm,
                     "lr": engine.lr, "seq_per_s": seen * rt.world_size / (time.perf_counter() - tic)}
            log.advance({"loss": stats["loss"], "seq/s": stats["seq_per_s"]})
            if end_of_step(state, stats, cfg.runtime, log, checkpoint, preemption, rt):
                return {}
        state.epoch += 1
        state.batch_in_epoch = 0
        if state.epoch % p.eval_every_epochs == 0 or state.epoch == p.epochs:
            improved = track_best(state, validate(), cfg.eval.metric, log, checkpoint)
            state.bad_evals = 0 if improved else state.bad_evals + 1
        checkpoint()
    log.close_bar()

    return report_best(model, run_dir, data, cfg, rt, log, state.step, "backbone")
