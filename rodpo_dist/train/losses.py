"""Next-item losses over the item catalog: exact full softmax in chunks, and sampled softmax with logQ.

`items` is either an item table [N+1, d] (row 0 = padding) or a callable mapping item ids to
vectors (e.g. the model's `ItemEncoder`, so gradients reach its parameters); with a callable,
pass `num_items` = N. Targets equal to 0 mark padding positions and are ignored. Losses average
over the real targets (`reduction="mean"`) or sum them (`"sum"`, for normalising by a global count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from rodpo_dist.config import Config, PretrainConfig
from rodpo_dist.model.sasrec import SASRec

Items = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
Reduction = Literal["mean", "sum"]


def _item_fn(items: Items, num_items: int | None) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    if isinstance(items, torch.Tensor):
        return items.__getitem__, items.shape[0] - 1
    if num_items is None:
        raise ValueError("num_items is required when items is a callable")
    return items, num_items


def _real_targets(hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    (real,) = torch.nonzero(targets, as_tuple=True)
    return hidden[real], targets[real]


class _ChunkedLogSumExp(torch.autograd.Function):
    """lse_t = log sum_j exp(h_t . w_j) over table rows [first:], one chunk of rows at a time.

    Forward keeps only lse [T]; backward recomputes each chunk's scores s, and with
    p = exp(s - lse) (in place) gives grad_h = (p @ W) * g and grad_W = p^T @ (h * g): two
    element-wise passes per chunk and no T x N tensor. Matmuls in `dtype` (bf16 under autocast),
    the exponentials and sums in fp32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, table: torch.Tensor, first: int, chunk: int, dtype: torch.dtype):
        h, lse = hidden.to(dtype), hidden.new_full((hidden.shape[0],), float("-inf"), dtype=torch.float32)
        for lo in range(first, table.shape[0], chunk):
            scores = (h @ table[lo:lo + chunk].to(dtype).t()).float()
            lse = torch.logaddexp(lse, torch.logsumexp(scores, dim=1))
        ctx.save_for_backward(hidden, table, lse)
        ctx.first, ctx.chunk, ctx.dtype = first, chunk, dtype
        return lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hidden, table, lse = ctx.saved_tensors
        h, hg = hidden.to(ctx.dtype), (hidden * grad[:, None]).to(ctx.dtype)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_table = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
        for lo in range(ctx.first, table.shape[0], ctx.chunk):
            rows = table[lo:lo + ctx.chunk].to(ctx.dtype)
            p = (h @ rows.t()).float().sub_(lse[:, None]).exp_().to(ctx.dtype)
            grad_h += (p @ rows).float()
            grad_table[lo:lo + ctx.chunk] = (p.t() @ hg).float()
        return (grad_h * grad[:, None]).to(hidden.dtype), grad_table.to(table.dtype), None, None, None


def _compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 inside a bf16 autocast region, else fp32."""
    if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def log_partition(hidden: torch.Tensor, items: Items, chunk: int, num_items: int | None = None,
                  exclude_padding: bool = True) -> torch.Tensor:
    """logsumexp over the catalog of hidden [T, d]'s scores -> [T] (fp32), `chunk` items at a time.

    Differentiable in `hidden` and the item vectors (a callable `items` is evaluated once on every
    id, so its parameters get the gradient); memory O(T x chunk), never T x N. Under a bf16
    autocast the score matmuls run in bf16, the log-sum-exp in fp32.
    """
    item_fn, n = _item_fn(items, num_items)
    dtype = _compute_dtype(hidden.device)
    table = items if isinstance(items, torch.Tensor) else item_fn(torch.arange(n + 1, device=hidden.device))
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLogSumExp.apply(hidden.float(), table.float(), 1 if exclude_padding else 0, chunk, dtype)


def chunked_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, items: Items, chunk: int,
                          num_items: int | None = None, exclude_padding: bool = True,
                          reduction: Reduction = "mean") -> torch.Tensor:
    """Next-item cross-entropy of hidden [T, d] over the whole catalog, `chunk` items at a time.

    Equals `F.cross_entropy(hidden @ table[1:].T, targets - 1)` (softmax over ids 1..N, or 0..N with
    `exclude_padding=False`), in value and gradients, but never materialises T x N logits (see
    `log_partition`).
    """
    item_fn, n = _item_fn(items, num_items)
    hidden, targets = _real_targets(hidden, targets)
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    target_logits = (hidden * item_fn(targets)).sum(-1).float()
    losses = log_partition(hidden, items, chunk, n, exclude_padding) - target_logits
    return losses.sum() if reduction == "sum" else losses.mean()


def _draw(q: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """`n` ids drawn with replacement from `q`: `torch.multinomial` up to its limit of 2^24 categories,
    beyond it by inverse transform (binary search of uniforms in the cumulative sum)."""
    if q.numel() <= 2**24:
        return torch.multinomial(q, n, replacement=True, generator=generator)
    cdf = q.double().cumsum(0)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=q.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=q.numel() - 1)


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, items: Items, num_sampled: int,
                         q: torch.Tensor, generator: torch.Generator | None = None,
                         num_items: int | None = None, reduction: Reduction = "mean") -> torch.Tensor:
    """Sampled-softmax next-item loss with logQ correction.

    `num_sampled` negatives are drawn with replacement from `q` [N+1] (q[0] must be 0), shared by the
    batch. Each negative logit is corrected by -log(num_sampled * q_j) and the positive is left as is,
    so the partition sum is an importance-sampling estimate of the full one: the loss tends to the
    full-softmax cross-entropy as num_sampled grows. Samples equal to a row's target (accidental hits)
    are removed from that row.
    """
    item_fn, n = _item_fn(items, num_items)
    if q.shape != (n + 1,) or q[0] != 0:
        raise ValueError(f"q must be a [{n + 1}] probability vector with q[0] = 0 (padding is never sampled)")
    hidden, targets = _real_targets(hidden, targets)
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    sampled = _draw(q, num_sampled, generator).to(hidden.device)
    positive = (hidden * item_fn(targets)).sum(-1, keepdim=True)
    negative = hidden @ item_fn(sampled).t() - torch.log(num_sampled * q.to(hidden.device)[sampled])
    negative = negative.masked_fill(sampled[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets), reduction=reduction)


def sampling_distribution(counts: torch.Tensor, kind: str, power: float) -> torch.Tensor:
    """Proposal q [N+1] of the sampled softmax from training counts [N+1] (q[0] = 0): uniform over ids
    1..N, or proportional to `(count + 1) ** power` (every item keeps a chance to be drawn)."""
    if kind == "uniform":
        q = torch.ones(counts.shape[0], dtype=torch.float64)
    elif kind == "popularity":
        q = (counts.double() + 1.0) ** power
    else:
        raise ValueError(f"unknown sampling {kind!r} (uniform or popularity)")
    q[0] = 0.0
    return (q / q.sum()).float()


def training_proposal(sequences: list[np.ndarray], num_items: int, cfg: PretrainConfig,
                      device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The sampled softmax's proposal from the training sequences' item counts, on `device` once for
    the whole run (None for `loss: full`)."""
    if cfg.loss != "sampled":
        return None
    counts = np.bincount(np.concatenate(sequences), minlength=num_items + 1) if sequences else np.zeros(num_items + 1)
    return sampling_distribution(torch.from_numpy(counts), cfg.sampling, cfg.popularity_power).to(device)


def next_item_loss(model: SASRec, seq: torch.Tensor, cfg: Config,
                   q: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-item loss of seq [B, L+1] and the model's MoE aux loss.

    Position t of `seq[:, :-1]` predicts `seq[:, t+1]`; a target after a padding input (the first
    item of a left-padded row) has no history and is skipped, like padding targets. `pretrain.loss`
    picks the exact chunked softmax or a sampled softmax with proposal `q` (`sampling_distribution`;
    None: uniform over ids 1..N).
    """
    inputs, targets = seq[:, :-1], seq[:, 1:] * (seq[:, :-1] != 0)
    out = model(inputs)
    encoder, p = model.item_encoder, cfg.pretrain
    if p.loss == "full":
        ce = chunked_cross_entropy(out.hidden, targets, encoder, p.item_chunk, encoder.num_items, reduction="sum")
    else:
        if q is None:
            q = sampling_distribution(torch.zeros(encoder.num_items + 1), "uniform", 1.0)
        ce = sampled_softmax_loss(out.hidden, targets, encoder, p.num_sampled, q.to(seq.device),
                                  num_items=encoder.num_items, reduction="sum")
    return ce, out.aux_loss
