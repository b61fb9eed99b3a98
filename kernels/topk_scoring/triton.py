"""Triton top-K scoring: an in-kernel candidate filter under the exact chunked scan of ``common``.

Design (exact for any K, memory ``O(B * cap)``, never ``[B, N]``):

1. The host walks the catalogue in chunks that grow geometrically (first chunk = ``cap`` items).
2. For each chunk one launch of ``_candidates_kernel`` over a grid (user blocks x item ranges):
   every program loads a ``[BM, d]`` user block once, loops over ``[BN, d]`` item tiles, scores them
   with ``tl.dot`` (bf16/fp16 operands, or tf32 for fp32, with fp32 accumulation) and appends each
   (user, item) whose score beats the user's threshold to that user's row of a ``[B, cap]`` buffer,
   taking slots from a per-user atomic counter. The counter keeps counting past ``cap``, so the
   host knows exactly when a chunk overflowed and retries it halved (a chunk of at most ``cap``
   items always fits).
3. The threshold is the running exact K-th score minus twice the error bound of the kernel's
   scores; candidates are filtered against exclusions, pruned, re-scored in fp32 and merged
   with ``torch.topk`` (``common.scan``), which lifts the threshold for the next chunk. With
   random item order about K items per user beat the threshold per doubling chunk.

Exclusions are applied as a post-filter on the (few) candidates, which is exact because the
threshold only ever comes from non-excluded exact scores.
"""

from __future__ import annotations

import os
from functools import partial

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import NEG_INF, UNIT_ROUNDOFF, error_bound, is_excluded, scan

TF32_ROUNDOFF = 2.0**-10  # tf32 keeps 10 mantissa bits; truncation bound
BLOCK_USERS, BLOCK_ITEMS, TILES_PER_PROGRAM = 32, 64, 8
MAX_CHUNK = 1 << 22
CAP_SLACK = 1024  # candidate slots per user beyond 2k + max exclusions


@triton.jit
def _candidates_kernel(
    users_ptr, items_ptr, thr_ptr, out_scores_ptr, out_rows_ptr, count_ptr,
    n_users, lo, hi, dim, stride_user, stride_item, cap,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, TILES: tl.constexpr,
    UPCAST: tl.constexpr,
):
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    b_ok = offs_b < n_users
    d_ok = offs_d < dim
    u = tl.load(users_ptr + offs_b[:, None] * stride_user + offs_d[None, :],
                mask=b_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:  # the interpreter computes bf16 wrongly: work in fp32 there
        u = u.to(tl.float32)
    thr = tl.load(thr_ptr + offs_b, mask=b_ok, other=float("inf"))
    first_row = lo + tl.program_id(1) * (BN * TILES)
    for t in range(TILES):
        rows = first_row + t * BN + tl.arange(0, BN)
        r_ok = rows < hi
        v = tl.load(items_ptr + rows.to(tl.int64)[:, None] * stride_item + offs_d[None, :],
                    mask=r_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        s = tl.dot(u, tl.trans(v))
        hit = (s > thr[:, None]) & r_ok[None, :] & b_ok[:, None]
        zero = tl.zeros((BM, BN), dtype=tl.int32)
        slot = tl.atomic_add(count_ptr + offs_b[:, None] + zero, 1, mask=hit)
        keep = hit & (slot < cap)
        dest = offs_b.to(tl.int64)[:, None] * cap + slot
        tl.store(out_scores_ptr + dest, s, mask=keep)
        tl.store(out_rows_ptr + dest, (rows[None, :] + zero).to(tl.int64), mask=keep)


def _launch(compute: Tensor, items: Tensor, lo: int, hi: int, thr: Tensor, cap: int, keys: Tensor):
    """Candidates of rows [lo, hi) (see CandidateFn), in row order; None on overflow."""
    n_users, dim = compute.shape
    scores = torch.full((n_users, cap), NEG_INF, device=items.device)
    rows = torch.full((n_users, cap), -1, dtype=torch.long, device=items.device)
    count = torch.zeros(n_users, dtype=torch.int32, device=items.device)
    programs_per_chunk = triton.cdiv(hi - lo, BLOCK_ITEMS * TILES_PER_PROGRAM)
    grid = (triton.cdiv(n_users, BLOCK_USERS), programs_per_chunk)
    _candidates_kernel[grid](
        compute, items, thr.contiguous(), scores, rows, count,
        n_users, lo, hi, dim, compute.stride(0), items.stride(0), cap,
        BM=BLOCK_USERS, BN=BLOCK_ITEMS, BD=max(16, triton.next_power_of_2(dim)),
        TILES=TILES_PER_PROGRAM, UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
    )
    width = int(count.max())
    if width > cap:
        return None
    scores, rows = scores[:, :width], rows[:, :width]
    # atomics hand out slots in any order: sort by row so that ties resolve deterministically
    rows, order = rows.masked_fill(rows < 0, hi).sort(dim=1)
    scores = scores.gather(1, order).masked_fill_(is_excluded(keys, rows, items.shape[0]), NEG_INF)
    return scores, partial(rows.gather, 1)


def topk_rows(users: Tensor, items: Tensor, k: int, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Top-k (scores, row indices) of ``users @ items.T`` with ``keys`` (see common) excluded."""
    items = items.contiguous()
    compute = users.to(items.dtype).contiguous()
    if items.dtype == torch.float32:  # tl.dot rounds both operands to tf32
        users_u = items_u = TF32_ROUNDOFF
    else:
        users_u = 0.0 if users.dtype == items.dtype else UNIT_ROUNDOFF[items.dtype]
        items_u = 0.0
    margin = error_bound(users, items, users_roundoff=users_u, items_roundoff=items_u,
                         output_roundoff=0.0)
    max_excluded = int(torch.bincount(keys // items.shape[0]).max()) if keys.numel() else 0
    cap = 2 * k + max_excluded + CAP_SLACK

    def candidates(lo: int, hi: int, thr: Tensor, cap: int):
        return _launch(compute, items, lo, hi, thr, cap, keys)

    return scan(users, items, k, candidates, margin=margin, first_chunk=cap,
                max_chunk=MAX_CHUNK, cap=cap)
