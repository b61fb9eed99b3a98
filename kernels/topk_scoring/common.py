"""Shared pieces of the top-K scoring backends: result/exclusion types and the chunked scan.

The scan keeps an exact running top-K per user (``O(B*K)`` state) and asks a backend for the
*candidates* of one item chunk: every non-excluded item whose approximate score ``s_hat`` exceeds
a per-user threshold. Candidates are pruned and re-scored exactly when the backend scored in
reduced precision, and pooled; the pool is cut back to its top K now and then, which lifts the
threshold.

Exactness with reduced precision. Let ``s`` be the fp32 re-score of an item and ``beta_b`` a bound
on ``|s_hat - s|`` for every item of user ``b``, with a 1% slack (see :func:`error_bound`). An item
with ``s_hat_i <= theta - beta_b``, where ``theta`` is the K-th best re-score seen so far, has
``s_i < theta``: it is strictly beaten by K items and can be dropped (an exact tie with ``theta``
is kept). Likewise, inside a chunk an item with ``s_hat_i < tau - 2*beta_b``, ``tau`` the K-th best
``s_hat`` of the chunk, is beaten by the K items scoring ``s_hat >= tau``. The survivors are
re-scored in fp32, so the result is the exact top-K of the fp32 scores (which equal the fp32
reference up to fp32 rounding: ties). Exact backends pass no bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

NEG_INF = float("-inf")
POOL_WIDTH = 2  # the scan's pool of exact candidates is cut back to k when wider than this * k

# unit roundoff of the operands/outputs of a reduced-precision score computation
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


class TopK(NamedTuple):
    """Per-user top-K: ``scores`` float32 [B, k] descending (``-inf`` pads), ``ids`` int64 [B, k]
    global item ids (``-1`` pads)."""

    scores: Tensor
    ids: Tensor


class Exclusion(NamedTuple):
    """CSR exclusion lists: user ``b`` excludes global ids ``ids[offsets[b]:offsets[b+1]]``."""

    offsets: Tensor
    ids: Tensor


ExcludeArg = Exclusion | Tensor | None
RowsOf = Callable[[Tensor], Tensor]
# (lo, hi, thr [B], cap) -> (s_hat [B, C] float32, rows_of), or None when some user had more than
# ``cap`` candidates (the scan then retries a smaller chunk). ``s_hat`` must hold every
# non-excluded item of the chunk with s_hat > thr, except items that K items of the chunk held in
# ``s_hat`` provably beat (others may be present; empty slots are -inf); ``rows_of(idx [B, j])``
# maps column indices of ``s_hat`` to item rows.
CandidateFn = Callable[[int, int, Tensor, int], "tuple[Tensor, RowsOf] | None"]


def exclusion_pairs(exclude: ExcludeArg, n_users: int) -> tuple[Tensor, Tensor]:
    """(user index, global id) pairs of ``exclude``; padded form treats ids < 0 as padding."""
    if exclude is None:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty
    if isinstance(exclude, Exclusion):
        offsets, ids = exclude.offsets.long(), exclude.ids.long()
        if offsets.numel() != n_users + 1:
            raise ValueError(f"CSR offsets need B+1={n_users + 1} entries, got {offsets.numel()}")
        users = torch.repeat_interleave(torch.arange(n_users, device=ids.device), offsets.diff())
        return users, ids
    if exclude.dim() != 2 or exclude.shape[0] != n_users:
        raise ValueError(f"padded exclusion must be [B={n_users}, L], got {tuple(exclude.shape)}")
    users, col = (exclude >= 0).nonzero(as_tuple=True)
    return users, exclude[users, col].long()


def exclusion_keys(exclude: ExcludeArg, n_users: int, n_items: int, id_offset: int) -> Tensor:
    """Sorted unique keys ``user * n_items + row`` of the exclusions that fall on ``items`` rows."""
    users, ids = exclusion_pairs(exclude, n_users)
    rows = ids - id_offset
    keep = (rows >= 0) & (rows < n_items)
    return torch.unique(users[keep] * n_items + rows[keep])


def is_excluded(keys: Tensor, rows: Tensor, n_items: int) -> Tensor:
    """Mask of ``rows`` [B, C] (row indices, -1 = empty) whose (user, row) key is in ``keys``."""
    if keys.numel() == 0:
        return torch.zeros_like(rows, dtype=torch.bool)
    users = torch.arange(rows.shape[0], device=rows.device)[:, None]
    q = users * n_items + rows
    pos = torch.searchsorted(keys, q).clamp_(max=keys.numel() - 1)
    return (keys[pos] == q) & (rows >= 0)


def error_bound(
    users: Tensor,
    items: Tensor,
    *,
    users_roundoff: float,
    items_roundoff: float,
    output_roundoff: float,
    flush: float = 0.0,
) -> Tensor:
    """Per-user bound ``beta_b >= |s_hat - s_fp32|`` over all items, as float32 [B].

    ``s_hat`` is a dot product of operands rounded elementwise with relative errors
    ``<= users_roundoff`` and ``<= items_roundoff``, accumulated in fp32
    (``gamma_d = d*u32/(1-d*u32)``) and rounded to the output format (``output_roundoff``); the
    fp32 re-score adds another ``gamma_d``. All terms are relative to
    ``sum_i |u_i v_i| <= ||u|| * max_j ||v_j||`` (Cauchy-Schwarz); the item norms are computed in
    the table's dtype (fp32 accumulation, one rounding of the result: 2% covers it, and avoids an
    fp32 copy of the table). A 1% slack covers the rounding of the bound and of the threshold.
    ``flush``: operands, products and partial sums below it may be flushed to zero (AMX), an
    absolute error ``<= flush * (sqrt(d) * (||u|| + ||v||) + 2d)``.
    """
    d = users.shape[1]
    u32 = UNIT_ROUNDOFF[torch.float32]
    gamma = d * u32 / (1 - d * u32)
    rel = (1 + output_roundoff) * (1 + users_roundoff) * (1 + items_roundoff) * (1 + gamma) - 1
    rel += gamma
    item_norm = torch.linalg.vector_norm(items, dim=1).max().float() * 1.02
    user_norm = torch.linalg.vector_norm(users.float(), dim=1)
    flushed = flush * (d**0.5 * (user_norm + item_norm) + 2 * d)
    return user_norm * item_norm * (rel * 1.01) + flushed * 1.01


def merge(scores: Tensor, rows: Tensor, k: int, sort: bool = True) -> tuple[Tensor, Tensor]:
    """Top-k along dim 1 of candidate (scores, rows), descending unless not ``sort``; -inf entries
    get row -1; pads to k."""
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = torch.nn.functional.pad(scores, (0, pad), value=NEG_INF)
        rows = torch.nn.functional.pad(rows, (0, pad), value=-1)
    top, idx = scores.topk(k, dim=1, sorted=sort)
    return top, rows.gather(1, idx).masked_fill_(top == NEG_INF, -1)


def merge_topk(parts: list[TopK], k: int) -> TopK:
    """Combine per-shard results (disjoint item id ranges) into the global top-k."""
    scores = torch.cat([p.scores for p in parts], dim=1)
    ids = torch.cat([p.ids for p in parts], dim=1)
    return TopK(*merge(scores, ids, k))


def _compact(s_hat: Tensor, rows_of: RowsOf, k: int) -> tuple[Tensor, Tensor]:
    """(s_hat [B, width], rows): finite entries first and sorted, unless at most k (no pruning)."""
    if s_hat.shape[1] <= k:
        idx = torch.arange(s_hat.shape[1], device=s_hat.device).expand_as(s_hat)
        return s_hat, rows_of(idx).masked_fill_(s_hat == NEG_INF, -1)
    width = int((s_hat > NEG_INF).sum(1).max())
    s_hat, idx = s_hat.topk(width, dim=1)
    return s_hat, rows_of(idx).masked_fill_(s_hat == NEG_INF, -1)


def _prune(s_hat: Tensor, rows: Tensor, k: int, margin: Tensor) -> tuple[Tensor, Tensor]:
    """Drop sorted candidates below (K-th best s_hat) - 2*margin."""
    if s_hat.shape[1] <= k:
        return s_hat, rows
    keep = s_hat >= (s_hat[:, k - 1] - 2 * margin)[:, None]
    width = int(keep.sum(1).max())
    return s_hat[:, :width].masked_fill(~keep[:, :width], NEG_INF), rows[:, :width]


def _rescore(users32: Tensor, items: Tensor, rows: Tensor) -> Tensor:
    """Exact fp32 scores of the candidate ``rows`` [B, C] (-1 -> -inf).

    Elementwise product and sum, not ``bmm``: matmuls follow process-wide precision settings
    (the CPU path runs its tile matmuls with oneDNN's bf16 mode; TF32 on CUDA).
    """
    vecs = items.index_select(0, rows.clamp(min=0).flatten()).float()  # fresh: used in place
    scores = vecs.view(*rows.shape, items.shape[1]).mul_(users32[:, None, :]).sum(-1)
    return scores.masked_fill_(rows < 0, NEG_INF)


def scan(
    users: Tensor,
    items: Tensor,
    k: int,
    candidates: CandidateFn,
    *,
    margin: Tensor | None,
    first_chunk: int,
    max_chunk: int,
    cap: int,
) -> tuple[Tensor, Tensor]:
    """Exact running top-k over item chunks; returns (scores [B, k], rows [B, k], -1 = none).

    ``margin`` is the per-user error bound of ``candidates``' scores, or None when they are exact
    fp32. Exact candidates are appended to a pool, cut back to its top k (one ``topk``) only when
    it grows past ``POOL_WIDTH * k``; the threshold (-inf until k items are in) comes from the last
    cut. Chunks grow geometrically from ``first_chunk`` to ``max_chunk`` and halve when a chunk
    overflows ``cap`` candidates per user; a chunk of at most ``cap`` items always fits, so memory
    stays ``O(B * max(k, cap))`` beyond what ``candidates`` holds.
    """
    n_users, n_items = users.shape[0], items.shape[0]
    pool = torch.full((n_users, k), NEG_INF, device=users.device)
    pool_rows = torch.full((n_users, k), -1, dtype=torch.long, device=users.device)
    theta = pool[:, -1]  # K-th best exact score at the last compaction: a lower bound
    slack = 0.0 if margin is None else margin
    users32 = users.float()
    lo, size = 0, first_chunk
    while lo < n_items:
        hi = min(n_items, lo + size)
        thr = theta - slack
        found = candidates(lo, hi, thr, cap)
        if found is None:
            size = max(1, size // 2)
            continue
        s_hat, rows_of = found
        if margin is not None:  # keep the few survivors, re-score them exactly
            s_hat, rows = _compact(s_hat.masked_fill(s_hat <= thr[:, None], NEG_INF), rows_of, k)
            s_hat, rows = _prune(s_hat, rows, k, margin)
            s_hat = _rescore(users32, items, rows)
        else:
            rows = rows_of(torch.arange(s_hat.shape[1], device=s_hat.device).expand_as(s_hat))
        pool, pool_rows = torch.cat([pool, s_hat], 1), torch.cat([pool_rows, rows], 1)
        if pool.shape[1] > POOL_WIDTH * k:
            pool, pool_rows = merge(pool, pool_rows, k, sort=False)
            theta = pool.amin(1)
        lo, size = hi, min(2 * size, max_chunk)
    return merge(pool, pool_rows, k)
