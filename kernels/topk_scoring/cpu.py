"""Chunked PyTorch top-K scoring (the fast CPU path; plain torch ops, so it runs on any device).

Per item tile: one ``torch.mm`` of the tile with the users into a reused items-major ``[T, B]``
fp32 buffer (the faster orientation for oneDNN and for the reductions below), excluded entries set
to -inf, then a two-level maximum: over groups of ``GROUP`` items, then over ``SUPER`` groups.
Only the super-groups, then groups, then items whose maximum beats the user's threshold (the
running K-th score, see ``common.scan``) are opened. Beyond the matmul a tile costs one streaming
max-reduction plus work on its few candidates: no ``[B, N]`` tensor, no full-tile ``topk``, and
the boolean ops (slow on CPU) only touch small tensors.

Compute dtype. With bf16, the tile matmuls run under oneDNN's bf16 mode
(``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``: both operands rounded to bf16 inside
the call, AMX / AVX512-BF16 dot products, fp32 accumulation and output); the candidates are a
guaranteed superset of the fp32 top-K (``common.error_bound``) and are re-scored in fp32. With
fp32 the matmuls are strict fp32 (``"ieee"``) and their scores are used as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache, partial

import torch
from torch import Tensor

from .common import NEG_INF, RowsOf, UNIT_ROUNDOFF, error_bound, merge, scan

TILE_ELEMENTS = 1 << 22  # scores per tile and worker (16 MiB in fp32)
FANOUT = 8  # rows per group at each level of the threshold prefilter
LEVELS = 3  # levels of group maxima above the scores
PILOT_LEVEL = 2  # the pilot ranks the maxima of groups of FANOUT**PILOT_LEVEL items
PILOT_ITEMS_PER_K = 1024  # the pilot looks at this many items per k
CAP_SLACK = 1024  # candidate slots per user beyond 2k (more: the chunk is retried halved)
MIN_SHARD = 2048  # items per worker thread at least
BF16_FLAGS = {"amx_bf16", "avx512_bf16"}  # /proc/cpuinfo flags of native bf16 dot products
FLUSH = 2.0**-126  # inputs and results below this may be flushed to zero by AMX


@cache
def native_bf16() -> bool:
    """Whether oneDNN can use native bf16 dot products (x86 AMX-BF16 or AVX512-BF16) here."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return torch.backends.mkldnn.is_available() and bool(flags & BF16_FLAGS)


def compute_dtype_for(items: Tensor, compute_dtype: torch.dtype | None) -> torch.dtype:
    """The tile matmul dtype: ``compute_dtype``, or by default bf16 for CPU tensors where the CPU
    has native bf16 dot products and fp32 otherwise."""
    if compute_dtype is None:
        return torch.bfloat16 if items.device.type == "cpu" and native_bf16() else torch.float32
    if compute_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"compute_dtype must be float32 or bfloat16, got {compute_dtype}")
    return compute_dtype


@contextmanager
def _matmul_precision(precision: str) -> Iterator[None]:
    """oneDNN's fp32 matmul precision, process-wide, for the duration of the block."""
    matmul = torch.backends.mkldnn.matmul
    previous, matmul.fp32_precision = matmul.fp32_precision, precision
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def bf16_margin(users: Tensor, items: Tensor) -> Tensor:
    """Per-user bound on |bf16-mode tile score - fp32 score| (bf16 operands are not rounded)."""
    u = UNIT_ROUNDOFF[torch.bfloat16]
    return error_bound(users, items, users_roundoff=0.0 if users.dtype == torch.bfloat16 else u,
                       items_roundoff=0.0 if items.dtype == torch.bfloat16 else u,
                       output_roundoff=0.0, flush=FLUSH)


def _slice_excluded(excluded: tuple[Tensor, Tensor], lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """The (rows - lo, users) of ``excluded`` (sorted by row) that fall in [lo, hi)."""
    rows, users = excluded
    first, last = torch.searchsorted(rows, torch.tensor([lo, hi], device=rows.device)).tolist()
    return rows[first:last] - lo, users[first:last]


def _levels(scores: Tensor) -> list[Tensor]:
    """``scores`` [R, B] and its maxima over groups of FANOUT rows, repeated LEVELS times."""
    levels = [scores]
    for _ in range(LEVELS):
        levels.append(levels[-1].view(-1, FANOUT, scores.shape[1]).amax(1))
    return levels


def _descend(levels: list[Tensor], thr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(row, user, score) of the entries of ``levels[0]`` above the user's ``thr``, user-major:
    from the top level down, only the children of entries above ``thr`` are looked at."""
    n_users = thr.shape[0]
    users, idx = (levels[-1] > thr).T.nonzero(as_tuple=True)
    values = levels[-1][:0, 0]
    offsets = torch.arange(FANOUT, device=thr.device)
    for level in reversed(levels[:-1]):
        children = idx[:, None] * FANOUT + offsets
        values = level.view(-1).take(children * n_users + users[:, None])
        keep = (values > thr[users][:, None]).view(-1).nonzero().squeeze(1)
        idx, users, values = children.view(-1)[keep], users[keep // FANOUT], values.view(-1)[keep]
    return idx, users, values


def _dense(users: Tensor, rows: Tensor, s_hat: Tensor, n_users: int, cap: int):
    """Per-user rows of user-major candidates: (s_hat [B, width], rows_of), None if width > cap."""
    counts = torch.bincount(users, minlength=n_users)
    width = int(counts.max()) if users.numel() else 0
    if width > cap:
        return None
    rank = torch.arange(users.numel(), device=users.device) - (counts.cumsum(0) - counts)[users]
    scores = torch.full((n_users, width), NEG_INF, device=users.device)
    scores[users, rank] = s_hat
    dense_rows = torch.full((n_users, width), -1, dtype=torch.long, device=users.device)
    dense_rows[users, rank] = rows
    return scores, partial(dense_rows.gather, 1)


def _score_tile(users32: Tensor, items: Tensor, lo: int, hi: int, buf: Tensor,
                excluded: tuple[Tensor, Tensor]) -> Tensor:
    """Scores [R, B] of ``items[lo:hi]`` in ``buf`` [T, B], ``R`` = ``hi - lo`` rounded up to
    FANOUT**LEVELS (``T`` a multiple of it); padding and ``excluded`` (rows, users) are -inf."""
    size, block = hi - lo, FANOUT**LEVELS
    scores = buf[:-(-size // block) * block]
    torch.mm(items[lo:hi].float(), users32.T, out=scores[:size])
    scores[size:] = NEG_INF
    ex_rows, ex_users = _slice_excluded(excluded, lo, hi)
    scores[ex_rows, ex_users] = NEG_INF
    return scores


def _pilot(users32: Tensor, items: Tensor, k: int, margin: Tensor | None, buf: Tensor,
           excluded: tuple[Tensor, Tensor]) -> Tensor:
    """A per-user threshold below which no item can be in the top-k (-inf where unknown).

    The K-th largest maximum of the groups of level PILOT_LEVEL over the first PILOT_ITEMS_PER_K*k
    items: K groups, so K items, score at least that (less margin, then less another margin for the
    scores compared with it). A top-k of a few maxima per tile, no candidates: the scan then starts
    with a threshold as high as after this many items, and skips most of its early candidates.
    """
    n_rows, tile = min(items.shape[0], PILOT_ITEMS_PER_K * k), buf.shape[0]
    top = buf.new_full((0, buf.shape[1]), NEG_INF)
    for lo in range(0, n_rows, tile):
        scores = _score_tile(users32, items, lo, min(n_rows, lo + tile), buf, excluded)
        maxima = _levels(scores)[PILOT_LEVEL]
        top = torch.cat([top, maxima]).topk(min(k, top.shape[0] + maxima.shape[0]), dim=0).values
    if top.shape[0] < k:
        return buf.new_full((buf.shape[1],), NEG_INF)
    return top[-1] if margin is None else top[-1] - 2 * margin


def _tile_candidates(
    users32: Tensor, items: Tensor, lo: int, hi: int, thr: Tensor, cap: int, *, floor: Tensor,
    buf: Tensor, excluded: tuple[Tensor, Tensor],
) -> tuple[Tensor, RowsOf] | None:
    """Scores of ``items[lo:hi]`` above ``thr`` and ``floor`` (see CandidateFn and :func:`_pilot`),
    found through the group maxima. ``buf`` and ``excluded``: see :func:`_score_tile`."""
    levels = _levels(_score_tile(users32, items, lo, hi, buf, excluded))
    rows, users, s_hat = _descend(levels, torch.maximum(thr, floor))
    return _dense(users, rows + lo, s_hat, users32.shape[0], cap)


def _scan_shard(users: Tensor, items: Tensor, k: int, excluded: tuple[Tensor, Tensor],
                tile: int, compute: torch.dtype) -> tuple[Tensor, Tensor]:
    """Top-k (scores, rows) over one contiguous shard of ``items``."""
    margin = bf16_margin(users, items) if compute == torch.bfloat16 else None
    users32 = users.float()
    buf = torch.empty(tile, users.shape[0], device=items.device)
    floor = _pilot(users32, items, k, margin, buf, excluded)
    candidates = partial(_tile_candidates, users32, items, floor=floor, buf=buf,
                         excluded=excluded)
    return scan(users32, items, k, candidates, margin=margin, first_chunk=tile, max_chunk=tile,
                cap=2 * k + CAP_SLACK)


def topk_rows(users: Tensor, items: Tensor, k: int, keys: Tensor,
              compute_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Top-k (scores, row indices) of ``users @ items.T`` with ``keys`` (see common) excluded.

    ``compute_dtype``: see :func:`compute_dtype_for`. The catalogue is cut into up to
    ``torch.get_num_threads()`` contiguous shards, each scanned by a single-threaded worker thread,
    and the shard results merged: the many small per-tile ops then never fork-join. While the call
    runs, oneDNN's fp32 matmul precision is set process-wide (see module docstring).
    """
    compute = compute_dtype_for(items, compute_dtype)
    n_items, n_users = items.shape[0], users.shape[0]
    block = FANOUT**LEVELS
    tile = max(block, TILE_ELEMENTS // max(n_users, 1) // block * block)
    ex_rows, order = (keys % n_items).sort()
    ex_users = (keys // n_items)[order]
    workers = max(1, min(torch.get_num_threads(), n_items // MIN_SHARD))
    bounds = [n_items * i // workers for i in range(workers + 1)]

    def shard(lo: int, hi: int) -> tuple[Tensor, Tensor]:
        torch.set_num_threads(1)  # this worker thread only (a per-thread OpenMP setting)
        excluded = _slice_excluded((ex_rows, ex_users), lo, hi)
        scores, rows = _scan_shard(users, items[lo:hi], k, excluded, tile, compute)
        return scores, torch.where(rows < 0, -1, rows + lo)

    precision = "bf16" if compute == torch.bfloat16 else "ieee"
    with _matmul_precision(precision), ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(shard, bounds[:-1], bounds[1:]))
    return merge(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), k)
