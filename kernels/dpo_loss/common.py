"""Shared pieces of the DPO loss backends: output type, the loss on margins, gathers and scores."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Variant = Literal["pairwise", "mean", "sdpo"]
VARIANTS = ("pairwise", "mean", "sdpo")


class DPOOutput(NamedTuple):
    """``loss`` scalar (differentiable); detached metrics: ``margins`` = beta * margin [B, M],
    ``chosen_rewards`` [B], ``rejected_rewards`` [B, M], ``accuracy`` [B] = fraction of the M
    negatives with margin > 0. With a 1-D ``neg`` the [B, M] fields are [B]."""

    loss: Tensor
    margins: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    accuracy: Tensor


def preference_loss(z: Tensor, variant: Variant, label_smoothing: float) -> Tensor:
    """Mean loss of the reward margins ``z = beta * margin`` [B, M].

    ``mean``/``pairwise``: ``x = z`` per pair; ``sdpo``: ``x_b = -logsumexp_j(-z_bj)`` (S-DPO,
    Chen et al. 2024, equal to pairwise DPO for M = 1). Loss per ``x`` with conservative label
    smoothing ``ls``: ``-(1 - ls) * logsigmoid(x) - ls * logsigmoid(-x)``.
    """
    x = -torch.logsumexp(-z, dim=1) if variant == "sdpo" else z
    ls = label_smoothing
    return (-(1 - ls) * F.logsigmoid(x) - ls * F.logsigmoid(-x)).mean()


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32, or fp64 when any input is fp64 (used by gradcheck)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def gather(h: Tensor, items: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``h``, ``items[pos]`` [B, d] and ``items[neg]`` [B, M, d] in ``compute_dtype``."""
    dtype = compute_dtype(h, items)
    return h.to(dtype), items[pos].to(dtype), items[neg].to(dtype)


def scores(h: Tensor, pos_rows: Tensor, neg_rows: Tensor) -> tuple[Tensor, Tensor]:
    """Policy scores ``h . pos_rows`` [B] and ``h . neg_rows`` [B, M]."""
    return (h * pos_rows).sum(-1), torch.bmm(neg_rows, h[:, :, None]).squeeze(-1)


def metrics(chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """(margins [B, M], accuracy [B]) from chosen [B] and rejected [B, M] rewards."""
    margins = chosen[:, None] - rejected
    return margins, (margins > 0).float().mean(1)
