"""Top-K pool scoring: ``topk(users @ items.T)`` per user without materialising ``[B, N]``."""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import Tensor

from . import cpu
from .common import Exclusion, ExcludeArg, TopK, exclusion_keys, merge_topk
from .reference import topk_scores_reference

Backend = Literal["auto", "reference", "cpu", "triton"]

__all__ = ["Exclusion", "TopK", "merge_topk", "topk_scores"]


def _resolve(backend: Backend, items: Tensor) -> str:
    if backend == "auto":
        return "triton" if items.is_cuda else "cpu"
    return backend


def topk_scores(
    users: Tensor,
    items: Tensor,
    k: int,
    exclude: ExcludeArg = None,
    id_offset: int = 0,
    backend: Backend = "auto",
    compute_dtype: torch.dtype | None = None,
) -> TopK:
    """Top-``k`` items per user by ``users @ items.T``, sorted descending.

    Row ``r`` of ``items`` has global id ``r + id_offset``. ``items`` is fp32/bf16/fp16; ``users``
    has its dtype or fp32. ``exclude`` holds global ids per user: padded ``[B, L]`` (ids < 0 are
    padding) or CSR :class:`Exclusion`. Scores are fp32 and equal the fp32 reference up to fp32
    rounding, ids follow them (exact ties in any deterministic order); missing entries are
    ``-inf`` / ``-1``. ``backend="auto"`` uses Triton for CUDA tensors and the chunked PyTorch path
    otherwise (never Triton on CPU, even under ``TRITON_INTERPRET``).

    ``compute_dtype`` (CPU backend only): dtype of the tile matmuls, ``torch.bfloat16`` (then the
    candidates are re-scored in fp32: same result) or ``torch.float32``; ``None`` picks bf16 for
    CPU tensors on CPUs with native bf16 dot products (AMX / AVX512-BF16), fp32 otherwise.
    """
    if users.dim() != 2 or items.dim() != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"need users [B, d] and items [N, d], got {users.shape} and {items.shape}")
    if items.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"items must be fp32, bf16 or fp16, got {items.dtype}")
    if users.dtype not in (items.dtype, torch.float32):
        raise TypeError(f"users must be {items.dtype} or fp32, got {users.dtype}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if items.shape[0] == 0 or users.shape[0] == 0:
        empty = torch.full((users.shape[0], k), float("-inf"), device=items.device)
        return TopK(empty, torch.full_like(empty, -1, dtype=torch.long))
    name = _resolve(backend, items)
    if compute_dtype is not None and name != "cpu":
        raise ValueError(f"compute_dtype applies to the cpu backend only, not {name!r}")
    if name == "reference":
        return topk_scores_reference(users, items, k, exclude, id_offset)
    if name == "cpu":
        topk_rows = partial(cpu.topk_rows, compute_dtype=compute_dtype)
    elif name == "triton":  # imported on first use: TRITON_INTERPRET is read at @triton.jit time
        from .triton import topk_rows
    else:
        raise ValueError(f"unknown backend {backend!r}")
    keys = exclusion_keys(exclude, users.shape[0], items.shape[0], id_offset).to(items.device)
    with torch.no_grad():
        scores, rows = topk_rows(users, items, k, keys)
    return TopK(scores, torch.where(rows < 0, -1, rows + id_offset))
