"""Fused Triton DPO loss: one program per batch row.

Forward (``_forward_kernel``): gathers ``items[pos]`` and the M rows ``items[neg]``, computes the
policy scores, rewards, the (S-)DPO loss with label smoothing, the gradient coefficients
``dL/ds`` and ``dL/dh`` in one pass (fp32 math; bf16/fp16 rows are upcast right after loading).
Backward (``_item_grad_kernel``): ``tl.atomic_add`` of ``grad_out * coef * h`` into the touched
rows of an fp32 ``[N, d]`` gradient (duplicate ids accumulate). Nothing ``B x N`` is formed.
"""

from __future__ import annotations

from functools import partial

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import Variant


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _forward_kernel(
    h_ptr, items_ptr, pos_ptr, neg_ptr, ref_pos_ptr, ref_neg_ptr,
    loss_ptr, chosen_ptr, rejected_ptr, coef_pos_ptr, coef_neg_ptr, grad_h_ptr,
    n_neg, dim, stride_h, stride_item, beta, smoothing, scale,
    BM: tl.constexpr, BD: tl.constexpr, SDPO: tl.constexpr,
):
    b = tl.program_id(0)
    offs_m = tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    m_ok = offs_m < n_neg
    d_ok = offs_d < dim
    h = tl.load(h_ptr + b * stride_h + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    pos = tl.load(pos_ptr + b)
    p = tl.load(items_ptr + pos * stride_item + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    neg = tl.load(neg_ptr + b * n_neg + offs_m, mask=m_ok, other=0)
    n = tl.load(items_ptr + neg[:, None] * stride_item + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    chosen = beta * (tl.sum(h * p, axis=0) - tl.load(ref_pos_ptr + b))
    ref_neg = tl.load(ref_neg_ptr + b * n_neg + offs_m, mask=m_ok, other=0.0)
    rejected = beta * (tl.sum(n * h[None, :], axis=1) - ref_neg)
    z = chosen - rejected
    if SDPO:  # x = -logsumexp(-z); dx/dz = softmax(-z)
        a = tl.where(m_ok, -z, float("-inf"))
        e = tl.exp(a - tl.max(a, axis=0))
        x = -(tl.max(a, axis=0) + tl.log(tl.sum(e, axis=0)))
        loss = -(1.0 - smoothing) * _logsigmoid(x) - smoothing * _logsigmoid(-x)
        dx = -(1.0 - smoothing) * tl.sigmoid(-x) + smoothing * tl.sigmoid(x)
        dz = dx * e / tl.sum(e, axis=0)
    else:
        losses = -(1.0 - smoothing) * _logsigmoid(z) - smoothing * _logsigmoid(-z)
        loss = tl.sum(tl.where(m_ok, losses, 0.0), axis=0)
        dz = tl.where(m_ok, -(1.0 - smoothing) * tl.sigmoid(-z) + smoothing * tl.sigmoid(z), 0.0)
    g = beta * scale * dz  # dL/ds_neg = -g, dL/ds_pos = sum(g)
    coef_pos = tl.sum(g, axis=0)
    tl.store(loss_ptr + b, loss * scale)
    tl.store(chosen_ptr + b, chosen)
    tl.store(rejected_ptr + b * n_neg + offs_m, rejected, mask=m_ok)
    tl.store(coef_pos_ptr + b, coef_pos)
    tl.store(coef_neg_ptr + b * n_neg + offs_m, -g, mask=m_ok)
    grad_h = coef_pos * p - tl.sum(g[:, None] * n, axis=0)
    tl.store(grad_h_ptr + b * dim + offs_d, grad_h, mask=d_ok)


@triton.jit
def _item_grad_kernel(
    h_ptr, pos_ptr, neg_ptr, coef_pos_ptr, coef_neg_ptr, grad_out_ptr, grad_ptr,
    n_neg, dim, stride_h,
    BM: tl.constexpr, BD: tl.constexpr,
):
    b = tl.program_id(0)
    offs_m = tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    m_ok = offs_m < n_neg
    d_ok = offs_d < dim
    h = tl.load(h_ptr + b * stride_h + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    h = h * tl.load(grad_out_ptr)
    pos = tl.load(pos_ptr + b)
    tl.atomic_add(grad_ptr + pos * dim + offs_d, tl.load(coef_pos_ptr + b) * h, mask=d_ok)
    neg = tl.load(neg_ptr + b * n_neg + offs_m, mask=m_ok, other=0)
    coef = tl.load(coef_neg_ptr + b * n_neg + offs_m, mask=m_ok, other=0.0)
    tl.atomic_add(grad_ptr + neg[:, None] * dim + offs_d[None, :], coef[:, None] * h[None, :],
                  mask=m_ok[:, None] & d_ok[None, :])


def _blocks(n_neg: int, dim: int) -> dict[str, int]:
    return {"BM": triton.next_power_of_2(n_neg), "BD": triton.next_power_of_2(dim)}


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
    (n_rows, dim), n_neg = h.shape, neg.shape[1]
    items = items if items.stride(1) == 1 else items.contiguous()
    h = h if h.stride(1) == 1 else h.contiguous()
    new = partial(torch.empty, dtype=torch.float32, device=h.device)
    loss, chosen, coef_pos = new(n_rows), new(n_rows), new(n_rows)
    rejected, coef_neg, grad_h = new(n_rows, n_neg), new(n_rows, n_neg), new(n_rows, dim)
    sdpo = variant == "sdpo"
    _forward_kernel[(n_rows,)](
        h, items, pos.contiguous(), neg.contiguous(), ref_pos.float().contiguous(),
        ref_neg.float().contiguous(), loss, chosen, rejected, coef_pos, coef_neg, grad_h,
        n_neg, dim, h.stride(0), items.stride(0), float(beta), float(label_smoothing),
        1.0 / (n_rows if sdpo else n_rows * n_neg), SDPO=sdpo, **_blocks(n_neg, dim),
    )
    return loss.sum(), chosen, rejected, coef_pos, coef_neg, grad_h


def item_grads(
    h: Tensor, pos: Tensor, neg: Tensor, coef_pos: Tensor, coef_neg: Tensor,
    grad_out: Tensor, n_items: int, dtype: torch.dtype,
) -> Tensor:
    """Dense ``dL/ditems`` [n_items, d]; only the rows in ``pos``/``neg`` are non-zero."""
    h = h if h.stride(1) == 1 else h.contiguous()
    grad = torch.zeros(n_items, h.shape[1], dtype=torch.float32, device=h.device)
    _item_grad_kernel[(h.shape[0],)](
        h, pos.contiguous(), neg.contiguous(), coef_pos, coef_neg,
        grad_out.float().reshape(1).contiguous(), grad, neg.shape[1], h.shape[1], h.stride(0),
        **_blocks(neg.shape[1], h.shape[1]),
    )
    return grad.to(dtype)
