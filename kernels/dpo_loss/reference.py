"""Autograd reference of the DPO loss over gathered item rows (tests and small inputs)."""

from __future__ import annotations

from torch import Tensor

from .common import DPOOutput, Variant, gather, metrics, preference_loss, scores


def dpo_loss_reference(
    h: Tensor,
    items: Tensor,
    pos: Tensor,
    neg: Tensor,
    beta: float,
    ref_pos: Tensor,
    ref_neg: Tensor,
    variant: Variant,
    label_smoothing: float,
) -> DPOOutput:
    """DPO / S-DPO loss by plain autograd; ``neg`` [B, M], reference scores given."""
    s_pos, s_neg = scores(*gather(h, items, pos, neg))
    chosen = beta * (s_pos - ref_pos)
    rejected = beta * (s_neg - ref_neg)
    margins, accuracy = metrics(chosen.detach(), rejected.detach())
    loss = preference_loss(chosen[:, None] - rejected, variant, label_smoothing)
    return DPOOutput(loss, margins, chosen.detach(), rejected.detach(), accuracy)
