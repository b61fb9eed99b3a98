"""Sparse mixture-of-experts feed-forward block with two interchangeable backends.

`backend="deepspeed"` wraps `deepspeed.moe.layer.MoE` (expert parallelism over `ep_size` ranks);
`backend="torch"` is a single-process pure-PyTorch implementation of the same semantics, matching
DeepSpeed 0.19.8 (`deepspeed/moe/sharded_moe.py`, `top1gating` / `top2gating`, `use_rts=False`):

- logits = x @ Wg^T in fp32 (no bias), gates = softmax(logits) over the E experts.
- k=1: expert = argmax(gates), or argmax(logits + Gumbel noise) with noisy gating ("RSample");
  combine weight = the gate of the chosen expert (not renormalised).
- k=2: first = argmax(gates); second = argmax over the other experts of logits (+ Gumbel noise with
  noisy gating: DeepSpeed's `top2_2nd_expert_sampling`); the kept gates are renormalised to sum to 1.
- aux loss = E * sum_e mean_s(gates[s, e]) * mean_s(first_choice[s] == e)  (Switch/GShard balance loss,
  first choices only, counted before dropping). The caller adds `aux_weight * aux`.
- capacity = max(ceil(S / E * capacity_factor * k), min_capacity) with `eval_capacity_factor` in eval
  mode. Routes are queued per expert in token order, all first choices before all second choices;
  a route whose queue position is >= capacity is dropped (its weight is 0; a token that loses every
  route gets a zero output, so keep a residual around the block). With `drop_tokens=False` nothing is
  dropped. DeepSpeed's top-1 gate picks which over-capacity tokens to keep with `torch.topk` over a
  0/1 mask (ties in an implementation-defined order); the number kept per expert is the same.
- `last_expert_load`: routes per expert, counted before dropping (DeepSpeed's `exp_counts`).

Noisy gating is applied in training mode only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rodpo_dist.config import MoEConfig
from rodpo_dist.model.feedforward import FeedForward


class Routing(NamedTuple):
    experts: torch.Tensor
    """[S, k] chosen expert per route, first choice first."""
    weights: torch.Tensor
    """[S, k] fp32 combine weight; 0 for a dropped route."""
    kept: torch.Tensor
    """[S, k] bool, the route fits within the expert's capacity."""
    aux_loss: torch.Tensor
    expert_counts: torch.Tensor
    """[E] routes per expert before dropping."""


def expert_capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float, min_capacity: int) -> int:
    """Per-expert buffer size, computed in float32 exactly as DeepSpeed's `_capacity`."""
    capacity = torch.ceil(num_tokens / num_experts * torch.tensor(capacity_factor * k))
    return max(int(capacity), min_capacity)


def top_k_gating(logits: torch.Tensor, k: int, capacity: int | None = None,
                 noise: torch.Tensor | None = None) -> Routing:
    """Route S tokens to k of E experts from fp32 `logits` [S, E]; `capacity=None` drops nothing.

    `noise` [S, E] (Gumbel) perturbs the choice of the k=1 expert or of the k=2 second expert.
    """
    if k not in (1, 2):
        raise ValueError(f"top_k must be 1 or 2, got {k}")
    gates = F.softmax(logits, dim=1)
    num_experts = gates.shape[1]
    first = torch.argmax(logits + noise if noise is not None and k == 1 else gates, dim=1)
    choices = [first]
    if k == 2:
        second_logits = logits if noise is None else logits + noise
        taken = F.one_hot(first, num_experts).bool()
        choices.append(torch.argmax(second_logits.masked_fill(taken, float("-inf")), dim=1))
    experts = torch.stack(choices, dim=1)
    masks = F.one_hot(experts.t(), num_experts)  # [k, S, E]
    aux_loss = (gates.mean(0) * masks[0].float().mean(0)).sum() * num_experts

    per_choice = masks.sum(1)  # [k, E]
    queue = masks.cumsum(1) - 1 + (per_choice.cumsum(0) - per_choice)[:, None, :]
    position = (queue * masks).sum(-1).t()  # [S, k]
    kept = position < capacity if capacity is not None else torch.ones_like(experts, dtype=torch.bool)
    weights = gates.gather(1, experts) * kept
    if k == 2:
        weights = weights / weights.sum(1, keepdim=True).clamp_min(torch.finfo(weights.dtype).eps)
    return Routing(experts, weights, kept, aux_loss, per_choice.sum(0))


def _gumbel_like(logits: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise drawn as DeepSpeed's `gumbel_rsample` does (same RNG stream)."""
    return torch.distributions.Gumbel(logits.new_zeros(()), logits.new_ones(())).rsample(logits.shape)


class SparseMoE(nn.Module):
    """Top-k MoE of `FeedForward(hidden, ffn_hidden)` experts.

    `forward(x [..., hidden]) -> (y [..., hidden], aux_loss)`; `last_expert_load` holds the [E]
    route counts of the last call (see the module docstring for the exact semantics).
    """

    def __init__(self, hidden: int, ffn_hidden: int, cfg: MoEConfig, dropout: float = 0.0) -> None:
        super().__init__()
        if cfg.top_k not in (1, 2):
            raise ValueError(f"moe.top_k must be 1 or 2, got {cfg.top_k}")
        self.backend = cfg.backend
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.capacity_factor = cfg.capacity_factor
        self.eval_capacity_factor = cfg.eval_capacity_factor
        self.min_capacity = cfg.min_capacity
        self.drop_tokens = cfg.drop_tokens
        self.noisy_gating = cfg.noisy_gating
        self.last_expert_load = torch.zeros(cfg.num_experts, dtype=torch.long)
        if cfg.backend == "torch":
            if cfg.ep_size != 1:
                raise ValueError("expert parallelism (moe.ep_size > 1) needs moe.backend: deepspeed")
            self.gate = nn.Linear(hidden, cfg.num_experts, bias=False)
            self.experts = nn.ModuleList(FeedForward(hidden, ffn_hidden, dropout) for _ in range(cfg.num_experts))
        elif cfg.backend == "deepspeed":
            from deepspeed.moe.layer import MoE

            self.moe = MoE(hidden, FeedForward(hidden, ffn_hidden, dropout), num_experts=cfg.num_experts,
                           ep_size=cfg.ep_size, k=cfg.top_k, capacity_factor=cfg.capacity_factor,
                           eval_capacity_factor=cfg.eval_capacity_factor, min_capacity=cfg.min_capacity,
                           noisy_gate_policy="RSample" if cfg.noisy_gating and cfg.top_k == 1 else None,
                           drop_tokens=cfg.drop_tokens, use_rts=False, top2_2nd_expert_sampling=cfg.noisy_gating)
            for expert in self.moe.deepspeed_moe.experts.deepspeed_experts:
                expert.reset_parameters()  # DeepSpeed deep-copies one expert: give each its own init
        else:
            raise ValueError(f"unknown moe.backend {cfg.backend!r}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = x.reshape(-1, x.shape[-1])
        if tokens.shape[0] == 0:  # the balance loss of no tokens is 0/0
            self.last_expert_load = torch.zeros(self.num_experts, dtype=torch.long, device=x.device)
            return torch.zeros_like(x), x.new_zeros((), dtype=torch.float32)
        if self.backend == "torch":
            out, aux_loss, counts = self._torch_forward(tokens)
        else:
            out, aux_loss, counts = self._deepspeed_forward(tokens)
        self.last_expert_load = counts.detach()
        return out.view_as(x), aux_loss

    def _torch_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = F.linear(tokens.float(), self.gate.weight.float())
        noise = _gumbel_like(logits) if self.noisy_gating and self.training else None
        capacity = None
        if self.drop_tokens:
            factor = self.capacity_factor if self.training else self.eval_capacity_factor
            capacity = expert_capacity(tokens.shape[0], self.num_experts, self.top_k, factor, self.min_capacity)
        routing = top_k_gating(logits, self.top_k, capacity, noise)
        out = tokens.new_zeros(tokens.shape, dtype=torch.float32)
        for e, expert in enumerate(self.experts):
            token, route = torch.nonzero((routing.experts == e) & routing.kept, as_tuple=True)
            y = expert(tokens[token]).float() * routing.weights[token, route, None]
            out = out.index_add(0, token, y)
        return out.to(tokens.dtype), routing.aux_loss, routing.expert_counts

    def _deepspeed_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gate = self.moe.deepspeed_moe.gate
        gate.top2_2nd_expert_sampling = self.noisy_gating and self.training  # DeepSpeed samples in eval too
        real = tokens.shape[0]
        tokens, used = self._pad_to_ep_group(tokens)
        # DeepSpeed's top-1 gate asserts tokens >= min_capacity; capping it at the token count
        # changes no routing decision (a capacity >= S never drops).
        gate.min_capacity = min(self.min_capacity, tokens.shape[0])
        out, aux_loss, counts = self.moe(tokens, used)
        return out[:real], aux_loss, counts

    def _pad_to_ep_group(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pad to the largest token count in the expert-parallel group, pads marked unused.

        DeepSpeed caps the all-to-all capacity at each rank's own token count, so ranks with unequal
        counts (an uneven last batch) would exchange buffers of different sizes and gloo aborts.
        With top-1 the pads are marked unused: not counted, not dispatched, seen only by the balance
        loss's mean gate. DeepSpeed's top-2 gate takes no mask, so there they are routed too; their
        outputs are discarded either way.
        """
        group = getattr(self.moe.deepspeed_moe, "ep_group", None)
        if group is None or torch.distributed.get_world_size(group) == 1:
            return tokens, None
        count = torch.tensor([tokens.shape[0]], device=tokens.device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX, group=group)
        pad = int(count) - tokens.shape[0]
        used = torch.ones(int(count), dtype=torch.long, device=tokens.device)  # like the gate's mask
        used[tokens.shape[0]:] = 0
        return torch.cat([tokens, tokens.new_zeros(pad, tokens.shape[1])]), used


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups for AdamW-style optimizers, valid for both MoE backends.

    Matrices get `weight_decay`, vectors (biases, norms) none. When the model holds DeepSpeed MoE
    layers, expert parameters move to their own groups (`moe=True`) as DeepSpeed requires.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"name": "decay", "params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if any(isinstance(m, SparseMoE) and m.backend == "deepspeed" for m in model.modules()):
        from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

        groups = split_params_into_different_moe_groups_for_optimizer(groups)
    return [g for g in groups if g["params"]]
