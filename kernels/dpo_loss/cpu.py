"""PyTorch DPO loss with closed-form gradients (any device; no autograd graph over item rows).

The forward computes the loss, the per-score gradient coefficients ``dL/ds`` and ``dL/dh``; the
backward only scatters ``coef * h`` into the touched item rows with ``index_put_(accumulate=True)``
(duplicates accumulate; faster than ``index_add_`` on CPU). Saved state is ``O(B * (M + d))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Variant, gather, preference_loss, scores


def forward(
    h: Tensor,
    items: Tensor,
    pos: Tensor,
    neg: Tensor,
    beta: float,
    ref_pos: Tensor,
    ref_neg: Tensor,
    variant: Variant,
    label_smoothing: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, chosen [B], rejected [B, M], coef_pos [B], coef_neg [B, M], grad_h [B, d])."""
    hh, pos_rows, neg_rows = gather(h, items, pos, neg)
    s_pos, s_neg = scores(hh, pos_rows, neg_rows)
    chosen = beta * (s_pos - ref_pos.to(hh.dtype))
    rejected = beta * (s_neg - ref_neg.to(hh.dtype))
    with torch.enable_grad():  # autograd over the [B, M] margins only
        z = (chosen[:, None] - rejected).requires_grad_()
        loss = preference_loss(z, variant, label_smoothing)
        (dz,) = torch.autograd.grad(loss, z)
    coef_neg = -beta * dz
    coef_pos = -coef_neg.sum(1)
    grad_h = coef_pos[:, None] * pos_rows + torch.bmm(coef_neg[:, None, :], neg_rows).squeeze(1)
    return loss.detach(), chosen, rejected, coef_pos, coef_neg, grad_h


def item_grads(
    h: Tensor, pos: Tensor, neg: Tensor, coef_pos: Tensor, coef_neg: Tensor,
    grad_out: Tensor, n_items: int, dtype: torch.dtype,
) -> Tensor:
    """Dense ``dL/ditems`` [n_items, d]; only the rows in ``pos``/``neg`` are non-zero."""
    hh = h.to(coef_pos.dtype) * grad_out
    rows = torch.cat([pos, neg.flatten()])
    neg_values = (coef_neg[:, :, None] * hh[:, None, :]).flatten(0, 1)
    values = torch.cat([coef_pos[:, None] * hh, neg_values])
    grad = torch.zeros(n_items, h.shape[1], dtype=coef_pos.dtype, device=h.device)
    return grad.index_put_((rows,), values, accumulate=True).to(dtype)  # duplicates accumulate
