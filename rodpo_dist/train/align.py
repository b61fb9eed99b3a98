"""Alignment recipe: DPO / RoDPO from a pretrained checkpoint (the frozen reference policy).

Reads top to bottom: the policy (dropout and gating noise off by default) and the reference (its
item table cached), the training contexts (the last or every position of each training sequence)
and the candidate pool, then one micro-batch: states of every context from one forward pass,
negatives by strategy, the DPO / S-DPO loss plus the anchoring next-item CE (or the CE alone: the
`ce` control; `align.rejected` puts the user's observed rejections in place of some or all of them), the logged rewards as log-probability ratios, the false-negative counts. Around the
steps: the pool refresh, validation every `eval_every_steps` (the step-0 policy competes for
`best`), and the optional TR-DPO soft update of the reference. The skeleton does the rest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from rodpo_dist.config import Config, differing_keys, read_yaml, saved_config_file
from rodpo_dist.data import SequenceBatch, TrainingContexts, load_split
from rodpo_dist.data.batching import length_grouped_batches
from rodpo_dist.model import make_model
from rodpo_dist.model.expert_parallel import join_expert_groups
from rodpo_dist.model.weights import CheckpointError, load_weights
from rodpo_dist.train.checkpoint import TrainState
from rodpo_dist.train.false_negatives import FalseNegativeCounter, held_out_rates, pool_rates
from rodpo_dist.train.losses import log_partition, sampled_softmax_loss, training_proposal
from rodpo_dist.train.negatives import (draw_observed, mix_observed, observed_per_context, observed_slots,
                                       select_negatives)
from rodpo_dist.train.pool import CandidatePool
from rodpo_dist.train.recipe import Recipe, steps_per_epoch
from rodpo_kernels import dpo_loss

POOL_STRATEGIES = ("hard", "rodpo", "sdpo")


def policy_config(cfg: Config) -> Config:
    """The policy's model config: with `align.disable_dropout`, no dropout and no MoE gating noise."""
    if not cfg.align.disable_dropout:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0),
                               moe=dataclasses.replace(cfg.moe, noisy_gating=False))


def global_batches(num_sequences: int, lengths: np.ndarray, cfg: Config, epoch: int,
                   world_size: int) -> list[np.ndarray]:
    """The epoch's global batches of sequence indices (length-grouped, seeded), each holding
    batch_size x grad_accum x world_size sequences: the same whatever the number of ranks."""
    a = cfg.align
    size = a.batch_size * a.grad_accum * world_size
    rng = np.random.default_rng([cfg.runtime.seed, 7919, epoch])
    return length_grouped_batches(lengths, size, cfg.data.length_window, rng) if num_sequences else []


MODEL_SETTINGS = ("model.", "moe.", "data.modalities")
"""The settings that shape the weights: a checkpoint fits the model only when they agree."""


def load_init(cfg: Config, model: torch.nn.Module) -> None:
    """Load the `init` checkpoint into `model`; when it does not fit, name the model settings in which
    the checkpoint's saved config and this one differ."""
    try:
        load_weights(cfg.init, model)
    except CheckpointError as err:
        saved = saved_config_file(cfg.init)
        if saved is None:
            raise
        trained = read_yaml(saved)
        diff = {k: v for k, v in differing_keys({**trained, "stage": cfg.stage}, cfg).items()
                if k.startswith(MODEL_SETTINGS)}
        if not diff:
            raise
        named = ", ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (here)" for k, (a, b) in diff.items())
        override = " ".join(f"{k}={a}" for k, (a, _) in diff.items())
        raise CheckpointError(f"{err}. Its model settings differ from this config's: {named}. Align with the "
                              f"settings it was trained with (overrides: {override})") from None


DPO_STATS = ("dpo_loss", "margin", "accuracy", "chosen_reward", "rejected_reward", "logp_chosen_ref")


class Alignment(Recipe):
    report_last = True  # the selection may keep the step-0 backbone: what the method did is shown too

    def __init__(self, cfg: Config) -> None:
        if not cfg.init:
            raise ValueError("align needs a pretrained checkpoint: pass --init PATH (or set `init:` in the config)")
        super().__init__(policy_config(cfg), cfg.align)
        self.cfg, a = cfg, cfg.align
        self.rejected = a.rejected if a.strategy != "ce" else "pool"
        self.label = a.strategy if self.rejected == "pool" else f"{a.strategy}-{self.rejected}"  # as its folder
        uses_ce = a.strategy == "ce" or a.ce_weight > 0
        self.stat_names = ("loss", "logp_chosen", *(("ce",) if uses_ce else ()),
                           *(DPO_STATS if a.strategy != "ce" else ()))
        load_init(cfg, self.model)
        self.reference = make_model(cfg, self.data, self.rt.device)
        load_weights(cfg.init, self.reference)
        join_expert_groups(self.reference, attach=True)  # no engine wraps the reference
        self.reference.eval().requires_grad_(False)
        self.ref_table = self.reference.item_encoder.item_table(cfg.eval.item_chunk)
        self.truth = self.data.truth

        self.contexts = TrainingContexts.from_split(load_split(self.data.dir, "train"), a.positions, cfg.model.max_len)
        self.context_users = self.contexts.context_users()
        valid_target = dict(zip(self.data.valid.users.tolist(), self.data.valid.targets.tolist()))
        self.held_out = np.array([valid_target.get(u, -1) for u in self.context_users.tolist()], dtype=np.int64)
        index = ({"lists": cfg.pool.ivf_lists, "probe": cfg.pool.ivf_probe, "seed": cfg.runtime.seed}
                 if cfg.pool.index == "ivf" else None)
        self.pool = CandidatePool(self.contexts, cfg.pool.k, index) if a.strategy in POOL_STRATEGIES else None
        self.num_items = self.data.manifest.num_items
        # the sampled CE's proposal
        self.q = (training_proposal(self.contexts.sequences, self.num_items, cfg.pretrain, self.rt.device)
                  if a.ce_loss == "pretrain" else None)
        self.variant = "sdpo" if a.strategy == "sdpo" else ("pairwise" if a.num_negatives == 1 else "mean")
        # negatives are drawn per rank (each rank has its own contexts): one stream per rank, saved per rank
        self.sampler = torch.Generator().manual_seed(cfg.runtime.seed + 7919 * self.rt.rank)
        self.false_negatives = FalseNegativeCounter()
        self.observed_counts = torch.zeros(2, dtype=torch.float64)  # (observed negatives drawn, all negatives)
        if self.rejected != "pool":
            self._index_rejections()
        per_rank = math.ceil(self.contexts.num_sequences / self.rt.world_size)
        self.build_engine(self.model, steps_per_epoch(per_rank, a), len(self.contexts))
        self.log_due = False

    def _index_rejections(self) -> None:
        """Per training context, where its user's usable observed rejections start in the flat list and
        how many there are (`align.observed_scope`: every training one, or those before its target)."""
        rejections = self.data.rejections
        if rejections is None:
            raise ValueError(f"align.rejected={self.rejected}: the dataset at {self.data.dir} records no observed "
                             "rejections (prepare it with data.max_dislike_rating, or data.synthetic.dislike_rate > 0)")
        offsets, items, position = rejections.by_user(self.data.manifest.num_users, heldout=False)
        starts, available = observed_per_context(self.contexts, offsets, position, self.cfg.align.observed_scope)
        self.rej_items = torch.as_tensor(items, dtype=torch.long)
        self.ctx_rej_start, self.ctx_rej_available = torch.as_tensor(starts), torch.as_tensor(available)

    def _with_observed(self, b: SequenceBatch, neg: torch.Tensor, ranks: torch.Tensor):
        """The strategy's negatives with `align.rejected`'s share of slots taken by observed rejections."""
        a = self.cfg.align
        starts, available = self.ctx_rej_start[b.context_ids], self.ctx_rej_available[b.context_ids]
        count = observed_slots(available, a.num_negatives, self.rejected, a.observed_share, self.sampler)
        observed = draw_observed(self.rej_items, starts, available, a.num_negatives, self.sampler)
        self.observed_counts += torch.tensor([float(count.sum()), float(neg.numel())], dtype=torch.float64)
        return mix_observed(neg, ranks, observed, count)

    # ------------------------------------------------------------------ batches

    def epoch_groups(self, epoch: int) -> Iterator[list[np.ndarray]]:
        """This rank's contiguous share of each global batch, cut into micro-batches of sequences."""
        a, rt = self.cfg.align, self.rt
        for batch in global_batches(self.contexts.num_sequences, self.contexts.lengths(), self.cfg, epoch,
                                    rt.world_size):
            share = np.array_split(batch, rt.world_size)[rt.rank]
            yield [share[i:i + a.batch_size] for i in range(0, len(share), a.batch_size)]

    def units(self, batch: np.ndarray) -> int:
        return int(self.contexts.contexts_per_sequence()[batch].sum())

    # ------------------------------------------------------------------ one micro-batch

    def micro_step(self, batch: np.ndarray, scale: float, micro_batches: int) -> dict[str, float]:
        cfg, a = self.cfg, self.cfg.align
        b = self.contexts.batch(batch)
        h, h_ref, aux = self._states(b)
        loss, stats = h.new_zeros(()), {}
        pos = b.targets.to(self.rt.device)
        s_pos = (h * self.model.item_encoder(pos)).sum(-1).float()
        uses_ce = a.strategy == "ce" or a.ce_weight > 0
        full_ce = uses_ce and self.q is None
        logz = None
        if full_ce or self.log_due:
            with self.autocast, torch.set_grad_enabled(full_ce):
                logz = log_partition(h, self.model.item_encoder, cfg.pretrain.item_chunk, self.num_items)
        if uses_ce:
            ce = (logz - s_pos).sum() if full_ce else sampled_softmax_loss(
                h, pos, self.model.item_encoder, cfg.pretrain.num_sampled, self.q.to(h.device),
                num_items=self.num_items, reduction="sum")
            loss = loss + (1.0 if a.strategy == "ce" else a.ce_weight) * ce
            stats["ce"] = float(ce.detach())
        if a.strategy != "ce":
            dpo, ref_pos = self._dpo(b, h, h_ref)
            n = len(pos)
            loss = loss + dpo.loss * n
            stats |= {"dpo_loss": float(dpo.loss.detach()) * n, "margin": float(dpo.margins.mean()) * n,
                      "accuracy": float(dpo.accuracy.mean()) * n}
            if self.log_due:
                stats |= self._rewards(dpo, logz.detach(), h_ref, ref_pos, n)
        if self.log_due:
            stats["logp_chosen"] = float((s_pos - logz).detach().sum())
        self.engine.backward(loss * scale + cfg.moe.aux_weight * aux / micro_batches)
        stats["loss"] = float(loss.detach())
        return stats

    def _states(self, b: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Policy states (with grad), reference states, MoE aux loss: [C, d] fp32 each context."""
        seq = b.seq.to(self.rt.device)
        with self.autocast:  # the transformer in bf16 when align.bf16; scores and losses in fp32
            out = self.engine.trainee(seq)
            with torch.no_grad():
                ref_hidden = self.reference(seq).hidden
        at = (b.rows.to(self.rt.device), b.cols.to(self.rt.device))
        return out.hidden[at].float(), ref_hidden[at].float(), out.aux_loss

    def _dpo(self, b: SequenceBatch, h: torch.Tensor, h_ref: torch.Tensor):
        a = self.cfg.align
        pool_ids, pool_scores = self.pool.rows(b.context_ids) if self.pool is not None else (None, None)
        neg, ranks = select_negatives(a.strategy, pool_ids=pool_ids, pool_scores=pool_scores, exclude=b.exclude,
                                      num_items=self.num_items, m=a.num_negatives, sampling=a.sampling,
                                      temperature=a.temperature, window_start=a.window_start,
                                      generator=self.sampler)
        if self.rejected != "pool":
            neg, ranks = self._with_observed(b, neg, ranks)
        if self.truth is not None:
            self.false_negatives.add(self.truth, b.users.numpy(), neg.numpy(), ranks.numpy())
        neg = neg.to(self.rt.device)
        ids = torch.cat([b.targets.to(self.rt.device)[:, None], neg], dim=1)
        unique, inverse = ids.unique(return_inverse=True)
        ref_scores = (h_ref[:, None, :] * self.ref_table[ids]).sum(-1)
        dpo = dpo_loss(h, None, self.model.item_encoder(unique).float(), inverse[:, 0], inverse[:, 1:], a.beta,
                       ref_scores=(ref_scores[:, 0], ref_scores[:, 1:]), variant=self.variant,
                       label_smoothing=a.label_smoothing)
        return dpo, ref_scores[:, 0]

    @torch.no_grad()
    def _rewards(self, dpo, logz: torch.Tensor, h_ref: torch.Tensor, ref_pos: torch.Tensor, n: int) -> dict[str, float]:
        """Implicit rewards as TRL logs them: beta * (log pi(i) - log pi_ref(i)), full-softmax log-probs
        (score minus the catalog's log-partition), summed over contexts."""
        beta = self.cfg.align.beta
        logz_ref = log_partition(h_ref, self.ref_table, self.cfg.eval.item_chunk)
        shift = beta * (logz - logz_ref)  # the per-context constant the margins are invariant to
        return {"chosen_reward": float((dpo.chosen_rewards - shift).sum()),
                "rejected_reward": float((dpo.rejected_rewards.reshape(n, -1).mean(1) - shift).sum()),
                "logp_chosen_ref": float((ref_pos - logz_ref).sum())}

    def filler_step(self) -> None:
        with self.autocast:
            out = self.engine.trainee(torch.ones(1, 1, dtype=torch.long, device=self.rt.device))
        self.engine.backward(out.hidden.sum() * 0.0 + out.aux_loss * 0.0)

    # ------------------------------------------------------------------ around the steps

    def begin(self, state: TrainState) -> None:
        if state.step == 0:
            self.track(state)  # the step-0 policy (the backbone) competes for best

    def before_step(self, state: TrainState) -> None:
        self.log_due = (state.step + 1) % self.cfg.runtime.log_every == 0
        pool = self.cfg.pool
        upcoming = pool.scope == "upcoming"
        refresh_epoch = (pool.refresh_each_epoch or upcoming) and state.batch_in_epoch == 0
        if self.pool is not None and (self.pool.due(state.step, pool.refresh_steps) or refresh_epoch):
            self._refresh_pool(state, self._upcoming_sequences(state) if upcoming else None)

    def _upcoming_sequences(self, state: TrainState) -> np.ndarray:
        """Sequences of the global batches of the next `pool.refresh_steps` steps of this epoch (every
        rank's share: the refresh is a collective over the same contexts on every rank)."""
        batches = global_batches(self.contexts.num_sequences, self.contexts.lengths(), self.cfg, state.epoch,
                                 self.rt.world_size)
        return np.concatenate(batches[state.batch_in_epoch:state.batch_in_epoch + self.cfg.pool.refresh_steps])

    def pool_scorer(self) -> tuple[torch.nn.Module, torch.Tensor]:
        """The model and item table that score the pool: the current policy (`pool.source: policy`)
        or the reference."""
        if self.cfg.pool.source == "policy":
            return self.model, self.model.item_encoder.item_table(self.cfg.eval.item_chunk)
        return self.reference, self.ref_table

    def _refresh_pool(self, state: TrainState, sequences: np.ndarray | None) -> None:
        stats = self.pool.refresh(*self.pool_scorer(), step=state.step, batch_size=self.cfg.eval.batch_size,
                                  rt=self.rt, sequences=sequences)
        rows = (slice(None) if sequences is None else
                np.concatenate([np.arange(self.contexts.offsets[i], self.contexts.offsets[i + 1]) for i in sequences]))
        record = {"pool_refresh_s": stats.seconds, "pool_mb": stats.size_mb, "peak_rss_mb": stats.peak_rss_mb,
                  "contexts": len(self.contexts) if sequences is None else len(rows)}
        ids = self.pool.ids[rows]
        rates = held_out_rates(ids, self.held_out[rows])
        if self.truth is not None:
            rates |= pool_rates(self.truth, self.context_users[rows], ids)
        record |= rates
        state.extra.setdefault("pool_false_negative_rates", []).append(rates)
        self.log.log(state.step, record, kind="pool")

    def validate_after_epoch(self, state: TrainState) -> bool:
        every = self.cfg.align.eval_every_steps
        return not (every and state.step % every == 0)  # after_step has just validated this step

    def after_step(self, state: TrainState) -> None:
        a = self.cfg.align
        if a.reference_update_every and state.step % a.reference_update_every == 0:
            self._update_reference()
        if a.eval_every_steps and state.step % a.eval_every_steps == 0:
            self.track(state)

    @torch.no_grad()
    def _update_reference(self) -> None:
        """TR-DPO soft update: ref <- alpha * policy + (1 - alpha) * ref (then its item table again)."""
        alpha = self.cfg.align.reference_update_alpha
        for ref, new in zip(self.reference.parameters(), self.model.parameters()):
            ref.mul_(1 - alpha).add_(new.detach(), alpha=alpha)
        self.ref_table = self.reference.item_encoder.item_table(self.cfg.eval.item_chunk)

    # ------------------------------------------------------------------ state and report

    def shared_state(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict()} if self.pool is not None else {}

    def rank_state(self) -> dict[str, Any]:
        state = {"sampler": self.sampler.get_state(), "false_negatives": self.false_negatives.counts,
                 "observed_counts": self.observed_counts}
        if self.cfg.align.reference_update_every:
            state["reference"] = self.reference.state_dict()
        return state

    def load_state(self, shared: dict[str, Any], own: dict[str, Any]) -> None:
        if self.pool is not None:
            self.pool.load_state_dict(shared.get("pool", {}))
        if "sampler" in own:  # absent when resumed on another number of ranks
            self.sampler.set_state(own["sampler"])
            self.false_negatives.counts = own["false_negatives"]
            self.observed_counts = own.get("observed_counts", self.observed_counts)
        if self.cfg.align.reference_update_every:
            if "reference" not in own:
                raise ValueError("this run updates its reference (align.reference_update_every): resume it on the "
                                 "number of ranks that saved it")
            self.reference.load_state_dict(own["reference"])
            self.ref_table = self.reference.item_encoder.item_table(self.cfg.eval.item_chunk)

    def final_metrics(self, state: TrainState) -> dict[str, Any]:
        history = state.extra.get("pool_false_negative_rates", [])
        keys = dict.fromkeys(k for h in history for k in h)
        pooled = {key: float(np.mean([h[key] for h in history if key in h])) for key in keys}
        if self.rejected != "pool":
            drawn, total = self.rt.sum(self.observed_counts.to(self.rt.device)).cpu().tolist()
            pooled["observed_negative_share"] = drawn / total if total else float("nan")
        if self.truth is None:
            return pooled
        counts = self.rt.sum(self.false_negatives.counts.to(self.rt.device)).cpu()
        out: dict[str, Any] = {}
        if counts[:, 0].sum() > 0:  # the ce control draws no negatives
            out = FalseNegativeCounter.rates(counts, self.cfg.pool.k) | {"negatives_checked": int(counts[:, 0].sum())}
        return out | pooled


def align(cfg: Config, resume: str | None = None, overwrite: bool = False, preemption=None):
    """Align the policy; returns {"valid": ..., "test": ...} metrics of the best checkpoint."""
    return Alignment(cfg).run(resume, overwrite, preemption)
