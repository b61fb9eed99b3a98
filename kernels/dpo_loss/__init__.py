"""Fused DPO / S-DPO loss over an item table, with exact sparse gradients to the touched rows."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from . import cpu
from .common import VARIANTS, DPOOutput, Variant, gather, metrics, scores
from .reference import dpo_loss_reference

Backend = Literal["auto", "reference", "cpu", "triton"]

__all__ = ["DPOOutput", "dpo_loss"]


class _FusedDPO(torch.autograd.Function):
    """Loss from a backend's fused forward; backward scales the saved coefficients."""

    @staticmethod
    def forward(ctx, h, items, pos, neg, ref_pos, ref_neg, beta, variant, smoothing, impl):
        loss, chosen, rejected, coef_pos, coef_neg, grad_h = impl.forward(
            h, items, pos, neg, beta, ref_pos, ref_neg, variant, smoothing
        )
        ctx.save_for_backward(h, pos, neg, coef_pos, coef_neg, grad_h)
        ctx.impl, ctx.items_shape, ctx.items_dtype = impl, items.shape, items.dtype
        ctx.mark_non_differentiable(chosen, rejected)
        return loss, chosen, rejected

    @staticmethod
    def backward(ctx, grad_loss, _chosen, _rejected):
        h, pos, neg, coef_pos, coef_neg, grad_h = ctx.saved_tensors
        grad_hidden = grad_items = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad_h * grad_loss).to(h.dtype)
        if ctx.needs_input_grad[1]:
            grad_items = ctx.impl.item_grads(
                h, pos, neg, coef_pos, coef_neg, grad_loss, ctx.items_shape[0], ctx.items_dtype
            )
        return grad_hidden, grad_items, *([None] * 8)


def _resolve(backend: Backend, h: Tensor) -> str:
    if backend == "auto":
        return "triton" if h.is_cuda and h.dtype != torch.float64 else "cpu"
    return backend


def dpo_loss(
    h: Tensor,
    h_ref: Tensor | None,
    items: Tensor,
    pos: Tensor,
    neg: Tensor,
    beta: float,
    ref_items: Tensor | None = None,
    ref_scores: tuple[Tensor, Tensor] | None = None,
    variant: Variant = "mean",
    label_smoothing: float = 0.0,
    backend: Backend = "auto",
) -> DPOOutput:
    """DPO loss of user states ``h`` [B, d] for item ``pos`` [B] over negatives ``neg`` [B, M].

    Scores ``s(i) = h . items[i]``; reference scores ``h_ref . ref_items[i]`` (``ref_items``
    defaults to ``items``) or ``ref_scores = (ref_pos [B], ref_neg [B, M])`` (then ``h_ref`` may be
    None); the reference side
    gets no gradient. ``margin_j = (s(pos) - s_ref(pos)) - (s(neg_j) - s_ref(neg_j))``.
    ``pairwise`` (M = 1) and ``mean``: mean over b, j of ``-(1-ls) logsig(beta*margin_j)
    - ls logsig(-beta*margin_j)``; ``sdpo``: the same with ``beta*margin`` replaced per row by
    ``-log sum_j exp(-beta*margin_j)``. Gradients flow to ``h`` and the touched rows of ``items``.
    ``backend="auto"``: Triton for CUDA tensors, the PyTorch path otherwise.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    squeeze = neg.dim() == 1
    neg = neg[:, None] if squeeze else neg
    if variant == "pairwise" and neg.shape[1] != 1:
        raise ValueError(f"pairwise needs one negative per row, got {neg.shape[1]}")
    if ref_scores is None:
        if h_ref is None:
            raise ValueError("need h_ref (with ref_items or the shared table) or ref_scores")
        table = items if ref_items is None else ref_items
        with torch.no_grad():
            ref_pos, ref_neg = scores(*gather(h_ref, table, pos, neg))
    else:
        ref_pos, ref_neg = (s.detach() for s in ref_scores)
        ref_neg = ref_neg.reshape(neg.shape)
    name = _resolve(backend, h)
    if name == "reference":
        out = dpo_loss_reference(
            h, items, pos, neg, beta, ref_pos, ref_neg, variant, label_smoothing
        )
    elif name in ("cpu", "triton"):
        if name == "cpu":
            impl = cpu
        else:  # imported on first use: TRITON_INTERPRET is read at @triton.jit time
            from . import triton as impl
        loss, chosen, rejected = _FusedDPO.apply(
            h, items, pos, neg, ref_pos, ref_neg, beta, variant, label_smoothing, impl
        )
        margins, accuracy = metrics(chosen, rejected)
        out = DPOOutput(loss, margins, chosen, rejected, accuracy)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    if squeeze:
        out = out._replace(margins=out.margins[:, 0], rejected_rewards=out.rejected_rewards[:, 0])
    return out
