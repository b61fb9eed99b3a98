"""Chunked PyTorch top-K scoring (the fast CPU path; plain torch ops, so it runs on any device).

Per item tile: one ``torch.mm`` (in the items' dtype), excluded entries masked, the scores cut into
groups of ``GROUP`` items, and only groups whose maximum beats the user's running K-th score become
candidates. After the first tiles the threshold is high, so the per-tile work beyond the matmul is
one vectorised group-max plus a small gather; no ``[B, N]`` tensor and no full-tile ``topk``.
bf16/fp16 tiles are scored in low precision and the survivors re-scored in fp32 (see ``common``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .common import NEG_INF, RowsOf, UNIT_ROUNDOFF, error_bound, merge, scan

TILE_ELEMENTS = 1 << 21  # scores per tile and worker (8 MiB in fp32): stays in cache
GROUP = 32  # items per group of the threshold prefilter
MIN_SHARD = 2048  # items per worker thread at least


def _slice_excluded(excluded: tuple[Tensor, Tensor], lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """The (rows - lo, users) of ``excluded`` (sorted by row) that fall in [lo, hi)."""
    rows, users = excluded
    first, last = torch.searchsorted(rows, torch.tensor([lo, hi], device=rows.device)).tolist()
    return rows[first:last] - lo, users[first:last]


def _tile_candidates(
    users: Tensor, items: Tensor, lo: int, hi: int, thr: Tensor, excluded: tuple[Tensor, Tensor]
) -> tuple[Tensor, RowsOf]:
    """Scores of ``items[lo:hi]`` in the groups whose best score beats ``thr`` (see CandidateFn).

    ``excluded`` = (rows, users) sorted by row; the tile's entries are masked before grouping.
    Users with fewer selected groups than the widest user get unselected groups as filler (their
    scores are <= ``thr``, so they cannot enter the running top-k).
    """
    n_users = users.shape[0]
    scores = torch.mm(users, items[lo:hi].T).float()  # bf16 reductions are slow on CPU
    ex_rows, ex_users = _slice_excluded(excluded, lo, hi)
    scores[ex_users, ex_rows] = NEG_INF
    pad = -(hi - lo) % GROUP
    if pad:
        scores = torch.nn.functional.pad(scores, (0, pad), value=NEG_INF)
    grouped = scores.view(n_users, -1, GROUP)
    selected = grouped.amax(2) > thr[:, None]
    width = int(selected.sum(1).max())
    groups = selected.to(torch.uint8).topk(width, dim=1).indices
    s_hat = grouped.gather(1, groups[:, :, None].expand(-1, -1, GROUP)).flatten(1)

    def rows_of(idx: Tensor) -> Tensor:
        return lo + groups.gather(1, idx // GROUP) * GROUP + idx % GROUP

    return s_hat, rows_of


def _scan_shard(users: Tensor, items: Tensor, k: int, excluded: tuple[Tensor, Tensor], tile: int):
    """Top-k (scores, rows) over one contiguous shard of ``items``."""
    margin = None
    if items.dtype != torch.float32:
        u = UNIT_ROUNDOFF[items.dtype]
        margin = error_bound(users, items, users_roundoff=0.0 if users.dtype == items.dtype else u,
                             items_roundoff=0.0, output_roundoff=u)
    compute = users.to(items.dtype)

    def candidates(lo: int, hi: int, thr: Tensor, cap: int):
        return _tile_candidates(compute, items, lo, hi, thr, excluded)

    return scan(users, items, k, candidates, margin=margin, first_chunk=min(tile, 2048),
                max_chunk=tile, cap=max(items.shape[0], 1))


def topk_rows(users: Tensor, items: Tensor, k: int, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Top-k (scores, row indices) of ``users @ items.T`` with ``keys`` (see common) excluded.

    The catalogue is cut into up to ``torch.get_num_threads()`` contiguous shards, each scanned by
    a single-threaded worker thread, and the shard results merged: the many small per-tile ops
    then never fork-join (on a busy machine a fork-join per op can cost more than the op).
    """
    n_items = items.shape[0]
    tile = max(GROUP, TILE_ELEMENTS // max(users.shape[0], 1) // GROUP * GROUP)
    ex_rows, order = (keys % n_items).sort()
    ex_users = (keys // n_items)[order]
    workers = max(1, min(torch.get_num_threads(), n_items // MIN_SHARD))
    bounds = [n_items * i // workers for i in range(workers + 1)]

    def shard(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        torch.set_num_threads(1)  # this worker thread only (a per-thread OpenMP setting)
        excluded = _slice_excluded((ex_rows, ex_users), lo, hi)
        scores, rows = _scan_shard(users, items[lo:hi], k, excluded, tile)
        return scores, torch.where(rows < 0, -1, rows + lo)

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(shard, bounds[:-1], bounds[1:]))
    return merge(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), k)
