"""Alignment recipe: DPO / RoDPO from a pretrained checkpoint (the frozen reference policy).

Reads top to bottom: data, policy and frozen reference (its item table cached once), training
contexts and the candidate pool, optimizer and resume, then the loop: refresh the pool on
schedule, pick negatives with the configured strategy, DPO / S-DPO loss (+ optional next-item CE
and the MoE aux loss), log the alignment metrics, validate, keep the best checkpoint by
validation, and finally evaluate it on test.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from rodpo_dist.config import Config, save_config
from rodpo_dist.data import GroundTruth, load_split
from rodpo_dist.data.synthetic import TRUTH_FILE
from rodpo_dist.eval.evaluate import Contexts
from rodpo_dist.model import optimizer_param_groups
from rodpo_dist.model.expert_parallel import join_expert_groups
from rodpo_dist.train.checkpoint import TrainState, load_checkpoint, load_weights, resolve_resume, save_checkpoint
from rodpo_dist.train.losses import chunked_cross_entropy
from rodpo_dist.train.engine import StepSettings, build_engine
from rodpo_dist.train.negatives import select_negatives
from rodpo_dist.train.loop import end_of_step, finish_step
from rodpo_dist.train.optim import build_scheduler
from rodpo_dist.train.pool import CandidatePool
from rodpo_dist.train.selection import evaluate_splits, report_best, track_best
from rodpo_dist.train.run_log import RunLog
from rodpo_dist.train.runtime import Preemption, Runtime, seed_everything
from rodpo_dist.train.setup import load_dataset, make_model
from rodpo_kernels import dpo_loss


def training_contexts(dataset_dir: Path, per_user: int) -> Contexts:
    """The last `per_user` (history prefix, next item) pairs of every training sequence."""
    split = load_split(dataset_dir, "train")
    ctx_users, histories, targets = [], [], []
    for user, seq in zip(split.users, split.sequences):
        for cut in range(len(seq) - 1, max(0, len(seq) - 1 - per_user), -1):
            ctx_users.append(user)
            histories.append(seq[:cut])
            targets.append(seq[cut])
    return Contexts(np.asarray(ctx_users), histories, np.asarray(targets))


def _variant(strategy: str, m: int) -> str:
    return "sdpo" if strategy == "sdpo" else ("pairwise" if m == 1 else "mean")


def align(cfg: Config, resume: str | None = None,
          preemption: Preemption | None = None) -> dict[str, dict[str, float]]:
    """Align the policy; returns {"valid": ..., "test": ...} metrics of the best checkpoint."""
    a, rt = cfg.align, Runtime.create(cfg.runtime.device)
    if not cfg.init:
        raise ValueError("align needs a pretrained checkpoint: pass --init PATH (or set `init:` in the config)")
    run_dir = Path(cfg.runtime.run_dir) / f"align-{a.strategy}"
    seed_everything(cfg.runtime.seed)

    data = load_dataset(cfg)
    policy_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0)) if a.disable_dropout else cfg
    policy, reference = make_model(policy_cfg, data, rt.device), make_model(cfg, data, rt.device)
    load_weights(cfg.init, policy)
    load_weights(cfg.init, reference)
    join_expert_groups(reference, attach=True)  # no engine wraps the reference
    reference.eval().requires_grad_(False)
    ref_table = reference.item_encoder.item_table(cfg.eval.item_chunk)  # frozen: computed once
    truth = GroundTruth.load(data.dir) if (data.dir / TRUTH_FILE).is_file() else None

    contexts = training_contexts(data.dir, a.contexts_per_user)
    pool = CandidatePool(contexts, cfg.pool.k) if a.strategy != "random" else None
    num_items = data.manifest.num_items
    variant = _variant(a.strategy, a.num_negatives)

    optimizer = torch.optim.AdamW(optimizer_param_groups(policy, a.weight_decay), lr=a.lr)
    per_rank = math.ceil(len(contexts) / rt.world_size)
    steps_per_epoch = math.ceil(per_rank / (a.batch_size * a.grad_accum))
    scheduler = build_scheduler(optimizer, a.warmup_steps, steps_per_epoch * a.epochs, "cosine")
    engine = build_engine(cfg.runtime, policy, optimizer, scheduler, rt,
                          StepSettings(a.batch_size, a.grad_accum, a.grad_clip, a.bf16))
    autocast = torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=a.bf16)
    # negatives are drawn per rank (each rank has its own contexts): one stream per rank, saved per rank
    sampler = torch.Generator().manual_seed(cfg.runtime.seed + 7919 * rt.rank)

    state = TrainState()
    start = resolve_resume(run_dir, resume)
    if start is not None:
        state, trainer, own = load_checkpoint(start, policy, rt)
        engine.load_state_dict(trainer, own)
        if "sampler" in own:  # absent when resumed on another number of ranks
            sampler.set_state(own.pop("sampler"))
        if pool is not None and "pool_ids" in trainer:
            pool.ids, pool.scores = trainer["pool_ids"], trainer["pool_scores"]
            pool.refreshed_at = state.extra["pool_refreshed_at"]
    log = RunLog(run_dir, rt.is_main, cfg.runtime.progress)
    if start is not None:
        log.drop_after(state.step)
    if rt.is_main:
        save_config(cfg, run_dir / "config.yaml")

    def checkpoint(name: str | None = None) -> None:
        trainer = engine.state_dict()
        if pool is not None and pool.refreshed_at is not None:
            trainer |= {"pool_ids": pool.ids, "pool_scores": pool.scores}
            state.extra["pool_refreshed_at"] = pool.refreshed_at
        save_checkpoint(run_dir, state, policy, trainer, keep=cfg.runtime.keep_checkpoints, name=name,
                        rank_trainer={**engine.rank_state_dict(), "sampler": sampler.get_state()}, rt=rt)

    def validate() -> dict[str, float]:
        return evaluate_splits(policy, data, cfg, rt, ("valid",))["valid"]

    def refresh_pool() -> None:
        source = policy if cfg.pool.source == "policy" else reference
        table = ref_table if source is reference else policy.item_encoder.item_table(cfg.eval.item_chunk)
        stats = pool.refresh(source, table, step=state.step, max_len=cfg.model.max_len,
                             batch_size=cfg.eval.batch_size, rt=rt)
        log.log(state.step, {"pool_refresh_s": stats.seconds, "pool_mb": stats.size_mb,
                             "peak_rss_mb": stats.peak_rss_mb}, kind="pool")

    def micro_step(index: torch.Tensor, weight: float) -> dict[str, float]:
        seq, exclude, pos = contexts.batch(index.tolist(), cfg.model.max_len, exclude_target=True)
        seq, pos = seq.to(rt.device), pos.to(rt.device)
        with autocast:  # the transformer in bf16 when align.bf16; scores and losses in fp32
            out = engine.trainee(seq)
            with torch.no_grad():
                h_ref = reference.user_state(seq)
        h, h_ref = out.hidden[:, -1].float(), h_ref.float()
        pool_ids, pool_scores = pool.rows(index) if pool is not None else (None, None)
        neg = select_negatives(a.strategy, pool_ids=pool_ids, pool_scores=pool_scores, exclude=exclude,
                               num_items=num_items, m=a.num_negatives, sampling=a.sampling,
                               temperature=a.temperature, generator=sampler).to(rt.device)
        ids = torch.cat([pos[:, None], neg], dim=1)
        unique, inverse = ids.unique(return_inverse=True)
        ref_scores = (h_ref[:, None, :] * ref_table[ids]).sum(-1)
        dpo = dpo_loss(h, None, policy.item_encoder(unique).float(), inverse[:, 0], inverse[:, 1:], a.beta,
                       ref_scores=(ref_scores[:, 0], ref_scores[:, 1:]), variant=variant,
                       label_smoothing=a.label_smoothing)
        loss = dpo.loss + cfg.moe.aux_weight * out.aux_loss
        stats = {"loss": dpo.loss.item(), "margin": dpo.margins.mean().item(),
                 "accuracy": dpo.accuracy.float().mean().item(),
                 "chosen_reward": dpo.chosen_rewards.mean().item(),
                 "rejected_reward": dpo.rejected_rewards.mean().item()}
        if a.ce_weight > 0:
            ce = chunked_cross_entropy(h, pos, policy.item_encoder, cfg.pretrain.item_chunk, num_items)
            loss = loss + a.ce_weight * ce
            stats["ce"] = ce.item()
        engine.backward(loss * weight)
        if truth is not None:
            stats["false_negative_rate"] = float(truth.is_relevant(contexts.users[index.numpy()], neg.cpu().numpy()).mean())
        return stats

    policy.train()
    if state.step == 0:
        log.log(0, {"epoch": 0, **validate()}, kind="valid")
    while state.epoch < a.epochs:
        order = torch.randperm(len(contexts), generator=torch.Generator().manual_seed(cfg.runtime.seed * 7919 + state.epoch))
        shard = order[rt.rank::rt.world_size]
        groups = shard.split(a.batch_size * a.grad_accum)
        log.bar(steps_per_epoch, state.batch_in_epoch, f"align[{a.strategy}] epoch {state.epoch + 1}/{a.epochs}")
        for i in range(state.batch_in_epoch, steps_per_epoch):  # the same count on every rank
            group = groups[i] if i < len(groups) else shard[:0]
            if pool is not None and (pool.due(state.step, cfg.pool.refresh_steps)
                                     or (cfg.pool.refresh_each_epoch and state.batch_in_epoch == 0)):
                refresh_pool()
            # exactly `grad_accum` passes on every rank (zero-weighted fillers where its data ran
            # out), each weighted by its share of the global batch
            parts = [idx for idx in group.split(a.batch_size) if len(idx)]
            total = float(rt.sum(torch.tensor(float(len(group)), device=rt.device)))
            rows = [micro_step(idx, rt.world_size * len(idx) / total) for idx in parts]
            for _ in range(a.grad_accum - len(parts)):
                micro_step(order[:1], 0.0)
            grad_norm = engine.step()
            finish_step(state)
            stats = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
            stats |= {"grad_norm": grad_norm, "lr": engine.lr}
            log.advance({"loss": stats.get("loss", 0.0), "acc": stats.get("accuracy", 0.0)})
            if a.eval_every_steps and state.step % a.eval_every_steps == 0:
                track_best(state, validate(), cfg.eval.metric, log, checkpoint)
            if end_of_step(state, stats, cfg.runtime, log, checkpoint, preemption, rt):
                return {}
        state.epoch += 1
        state.batch_in_epoch = 0
        track_best(state, validate(), cfg.eval.metric, log, checkpoint)
        checkpoint()
    log.close_bar()

    return report_best(policy, run_dir, data, cfg, rt, log, state.step, a.strategy)

