"""Chunked top-K scoring, the fast CPU path: torch matmuls per tile, a compiled candidate selection.

Work split: a grid of (user block, item block) pairs, one single-threaded worker thread each;
user blocks first, since each then scans the whole catalogue and its threshold rises further.

Per worker, ``common.scan`` walks the items in tiles. Per tile: one ``torch.mm`` of the tile with
the users into a reused items-major ``[T, B]`` fp32 buffer (the faster orientation for oneDNN),
excluded entries set to -inf, then the tile's candidates are selected in one streaming pass by
the compiled selection (``select.cpp``, built on first use by :mod:`.native`): per user a gate
that starts at the scan's threshold and rises to just below the K-th best score held so far
(less 2 error bounds in bf16; ties kept), one vector comparison of each row against all gates,
and only the few rows that pass are touched again. Beyond the matmul a tile costs that one read
of its scores: no ``[B, N]`` tensor, no full-tile ``topk``, no second pass over any item.

Where ``select.cpp`` cannot be built (no C++ compiler), or with ``NATIVE_SELECT = False``, the
tiles' candidates (a superset of their top-K, as above) are found with torch ops: LEVELS levels
of maxima over groups of FANOUT rows into reused buffers; the K-th largest maximum of level
FLOOR_LEVEL raises a per-user floor (:func:`_raise_floor`: K items score at least that), and only
the children of entries above the user's threshold are looked at on the way down
(:func:`_descend`). It reads every score once more for the maxima and was slower in every
side-by-side run (``kernels/BENCHMARKS.md``, row ``fast_torch_select``).

Compute dtype. With bf16, the tile matmuls run under oneDNN's bf16 mode
(``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``: both operands rounded to bf16 inside
the call, AMX / AVX512-BF16 dot products, fp32 accumulation and output; no bf16 copy of the table);
the candidates are a guaranteed superset of the fp32 top-K (``common.error_bound``) and are
re-scored in fp32. (On CPUs with AVX512-BF16 but no AMX, oneDNN was seen running this mode as a
faster fp32 kernel without rounding; the bound then holds with room to spare.) With fp32 the matmuls are strict fp32 (``"ieee"``) and their scores are used as
they are. The precision is process-wide: while a call runs, other threads' fp32 oneDNN matmuls run
in it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache, partial

import torch
from torch import Tensor

from . import native
from .common import NEG_INF, RowsOf, UNIT_ROUNDOFF, error_bound, merge, scan

TILE_ELEMENTS = 1 << 20  # scores per tile and worker (4 MiB in fp32; as fast as 16 MiB: BENCHMARKS.md)
MIN_TILE_ROWS = 4096  # items per tile at least: with many users, fewer tiles to merge beat small ones
FANOUT = 8  # rows per group at each level of the threshold prefilter
LEVELS = 3  # levels of group maxima above the scores
FLOOR_LEVEL = 2  # the floor ranks the maxima of groups of FANOUT**FLOOR_LEVEL items
CAP_SLACK = 1024  # candidate slots per user beyond 2k (more: the chunk is retried halved)
MIN_SHARD = 2048  # items per item block at least
MIN_BLOCK_USERS = 32  # users per user block at least
BF16_FLAGS = {"amx_bf16", "avx512_bf16"}  # /proc/cpuinfo flags of native bf16 dot products
FLUSH = 2.0**-126  # inputs and results below this may be flushed to zero by AMX
NATIVE_SELECT = True  # select tile candidates with the compiled selection where it builds


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
def matmul_precision(precision: str) -> Iterator[None]:
    """oneDNN's fp32 matmul precision, process-wide, for the duration of the block; afterwards it
    inherits oneDNN's backend-wide setting again if it did ("none"; the getter resolves it)."""
    mkldnn = torch.backends.mkldnn
    previous = mkldnn.matmul.fp32_precision
    restore = "none" if previous == mkldnn.fp32_precision else previous
    mkldnn.matmul.fp32_precision = precision
    try:
        yield
    finally:
        mkldnn.matmul.fp32_precision = restore


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


def _levels(scores: Tensor, out: list[Tensor]) -> list[Tensor]:
    """``scores`` [R, B] and its maxima over groups of FANOUT rows, one level per buffer of ``out``
    (each at least 1/FANOUT the rows of the one before; reused, so no tile allocates).

    Row ``r`` of a level [R, B] belongs to group ``r % (R / FANOUT)``: the maximum of FANOUT
    contiguous slabs, which vectorises better than groups of adjacent rows."""
    levels = [scores]
    for buf in out:
        rows = levels[-1].shape[0] // FANOUT
        levels.append(torch.amax(levels[-1].view(FANOUT, rows, scores.shape[1]), 0, out=buf[:rows]))
    return levels


def _raise_floor(floor: Tensor, maxima: Tensor, k: int, margin: Tensor | None) -> None:
    """Lift ``floor`` [B] in place to just below the K-th largest of the group ``maxima`` [G, B]:
    K items score at least that, so no item scoring less (less 2 margins: the items compared are
    approximate too) can be in the top-k; ties with it stay above the floor."""
    if maxima.shape[0] < k:
        return
    kth = maxima.topk(k, dim=0, sorted=False).values.amin(0)
    bound = kth if margin is None else kth - 2 * margin
    torch.maximum(floor, bound.nextafter_(bound.new_tensor(NEG_INF)), out=floor)


def _descend(levels: list[Tensor], thr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(row, user, score) of the entries of ``levels[0]`` above the user's ``thr``, user-major:
    from the top level down, only the children of entries above ``thr`` are looked at.

    Entries are tracked by flat position ``row * B + user``: the children of an entry of a level
    with R rows sit at that position plus multiples of ``R * B`` in the level below."""
    n_users = thr.shape[0]
    users, rows = (levels[-1] > thr).T.nonzero(as_tuple=True)
    pos, pos_thr, values = rows * n_users + users, thr[users], thr.new_empty(0)
    for parent, level in zip(reversed(levels[1:]), reversed(levels[:-1])):
        children = pos[:, None] + torch.arange(0, level.numel(), parent.numel(), device=pos.device)
        values = level.view(-1).take(children)
        keep = (values > pos_thr[:, None]).view(-1).nonzero().squeeze(1)
        pos, pos_thr = children.view(-1)[keep], pos_thr[keep // FANOUT]
        values = values.view(-1)[keep]
    return pos // n_users, pos % n_users, values


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


def _tile_candidates(
    users32: Tensor, items: Tensor, lo: int, hi: int, thr: Tensor, cap: int, *, k: int,
    margin: Tensor | None, floor: Tensor, buf: Tensor, level_bufs: list[Tensor],
    excluded: tuple[Tensor, Tensor],
) -> tuple[Tensor, RowsOf] | None:
    """Scores of ``items[lo:hi]`` above ``thr`` and ``floor`` (see CandidateFn and
    :func:`_raise_floor`; this tile raises the floor first), found through the group maxima.
    ``buf`` and ``excluded``: see :func:`_score_tile`."""
    levels = _levels(_score_tile(users32, items, lo, hi, buf, excluded), level_bufs)
    if not bool((thr > floor).all()):  # until the scan's own threshold overtakes it
        _raise_floor(floor, levels[FLOOR_LEVEL], k, margin)
    rows, users, s_hat = _descend(levels, torch.maximum(thr, floor))
    return _dense(users, rows + lo, s_hat, users32.shape[0], cap)


def _selected_candidates(
    select: Callable, users32: Tensor, items: Tensor, lo: int, hi: int, thr: Tensor, cap: int, *,
    k: int, slack: Tensor, buf: Tensor, excluded: tuple[Tensor, Tensor],
) -> tuple[Tensor, RowsOf] | None:
    """The candidates of ``items[lo:hi]`` (see CandidateFn) from the compiled selection
    (``select.cpp``: one pass over the tile, a per-user gate rising to just below the k-th best
    held score minus ``slack``, 2 error bounds). ``buf`` and ``excluded``: see :func:`_score_tile`."""
    found = select(_score_tile(users32, items, lo, hi, buf, excluded), thr, slack, k, cap, lo)
    if not found:
        return None
    s_hat, rows = found
    return s_hat, partial(rows.gather, 1)


def _scan_block(users: Tensor, items: Tensor, k: int, excluded: tuple[Tensor, Tensor],
                margin: Tensor | None, select: Callable | None) -> tuple[Tensor, Tensor]:
    """Top-k (scores, rows) of one block of users over one contiguous block of ``items``, its
    tiles' candidates selected by ``select`` (the compiled selection) or, if None, with torch ops."""
    block, n_users = FANOUT**LEVELS, users.shape[0]
    tile = max(block, max(MIN_TILE_ROWS, TILE_ELEMENTS // max(n_users, 1)) // block * block)
    buf = torch.empty(tile, n_users, device=items.device)
    cap = 2 * k + CAP_SLACK
    if select is not None:
        slack = torch.zeros(n_users) if margin is None else 2 * margin
        candidates = partial(_selected_candidates, select, users, items, k=k, slack=slack, buf=buf,
                             excluded=excluded)
        first = tile
    else:
        level_bufs = [buf.new_empty(tile // FANOUT**level, n_users)
                      for level in range(1, LEVELS + 1)]
        floor = buf.new_full((n_users,), NEG_INF)
        first = tile if tile // FANOUT**FLOOR_LEVEL >= k else min(tile, cap)  # no floor: all until k
        candidates = partial(_tile_candidates, users, items, k=k, margin=margin, floor=floor,
                             buf=buf, level_bufs=level_bufs, excluded=excluded)
    return scan(users, items, k, candidates, margin=margin, first_chunk=first, max_chunk=tile,
                cap=cap)


def _grid(n_users: int, n_items: int, workers: int) -> tuple[list[range], list[range]]:
    """User blocks and item blocks, one worker per pair: users first (each user block scans the
    whole catalogue, so its threshold rises further), items when users are few."""
    user_blocks = max(1, min(workers, n_users // MIN_BLOCK_USERS))
    item_blocks = max(1, min(workers // user_blocks, n_items // MIN_SHARD))
    return ([range(n_users * i // user_blocks, n_users * (i + 1) // user_blocks)
             for i in range(user_blocks)],
            [range(n_items * i // item_blocks, n_items * (i + 1) // item_blocks)
             for i in range(item_blocks)])


def _block_exclusions(keys: Tensor, n_items: int, users: range, items: range):
    """(rows - items.start, users - users.start) of the ``keys`` in the block, sorted by row."""
    bounds = torch.tensor([users.start * n_items, users.stop * n_items], device=keys.device)
    first, last = torch.searchsorted(keys, bounds).tolist()
    rows, owners = keys[first:last] % n_items, keys[first:last] // n_items - users.start
    keep = (rows >= items.start) & (rows < items.stop)
    rows, order = (rows[keep] - items.start).sort()
    return rows, owners[keep][order]


DENSE_MAX_ITEMS = 65536  # catalogues up to this size are scored densely, users in blocks
DENSE_BLOCK_SCORES = 1 << 24  # scores per dense user block (64 MiB in fp32)
DENSE_MAX_SCORES = DENSE_BLOCK_SCORES  # calls with at most this many scores: densely, in one block


def scores_densely(n_users: int, n_items: int) -> bool:
    """Whether a call goes to :func:`dense_topk_rows`: a small catalogue, or few enough users that
    all their scores fit one dense block (serving: one matmul and ``topk`` beat the tiled scan,
    which is built for batches; kernels/BENCHMARKS.md)."""
    return n_items <= DENSE_MAX_ITEMS or n_users * n_items <= DENSE_MAX_SCORES


def dense_topk_rows(users: Tensor, items: Tensor, k: int, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Exact fp32 top-k of a small catalogue: blocks of users scored against all items at once.

    Below ~65k items a [b, N] block is cheap, and one matmul plus one ``topk`` per block beats
    the tiled scan's per-tile work (3,000 users x 12,101 items, a Beauty pool batch: 0.6 s against
    0.9 s for the scan on one loaded core)."""
    n_items = items.shape[0]
    table, users32 = items.float(), users.float()
    rows_of_key, users_of_key = keys % n_items, keys // n_items
    block = max(1, DENSE_BLOCK_SCORES // max(n_items, 1))
    scores_out, rows_out = [], []
    for lo in range(0, users.shape[0], block):
        hi = min(users.shape[0], lo + block)
        scores = users32[lo:hi] @ table.T
        first, last = torch.searchsorted(keys, torch.tensor([lo * n_items, hi * n_items], device=keys.device)).tolist()
        scores[users_of_key[first:last] - lo, rows_of_key[first:last]] = NEG_INF
        top, rows = scores.topk(min(k, n_items), dim=1)
        scores_out.append(top)
        rows_out.append(rows.masked_fill_(top == NEG_INF, -1))
    return merge(torch.cat(scores_out), torch.cat(rows_out), k)


def topk_rows(users: Tensor, items: Tensor, k: int, keys: Tensor,
              compute_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Top-k (scores, row indices) of ``users @ items.T`` with ``keys`` (see common) excluded.

    Small calls (:func:`scores_densely`) go to :func:`dense_topk_rows` (exact fp32).

    ``compute_dtype``: see :func:`compute_dtype_for`. The work is cut into a grid of up to
    ``torch.get_num_threads()`` (user block, item block) pairs, each scanned by a single-threaded
    worker thread (the many small per-tile ops then never fork-join), and the item blocks' results
    merged. While the call runs, oneDNN's fp32 matmul precision is set process-wide (see module
    docstring).
    """
    if scores_densely(users.shape[0], items.shape[0]):
        return dense_topk_rows(users, items, k, keys)
    compute = compute_dtype_for(items, compute_dtype)
    n_items, n_users = items.shape[0], users.shape[0]
    users32 = users.float()
    margin = bf16_margin(users, items) if compute == torch.bfloat16 else None
    user_ranges, item_ranges = _grid(n_users, n_items, torch.get_num_threads())
    select = native.tile_candidates() if NATIVE_SELECT else None

    def scan_block(user_range: range, item_range: range) -> tuple[Tensor, Tensor]:
        torch.set_num_threads(1)  # this worker thread only (a per-thread OpenMP setting)
        u, i = slice(user_range.start, user_range.stop), slice(item_range.start, item_range.stop)
        excluded = _block_exclusions(keys, n_items, user_range, item_range)
        scores, rows = _scan_block(users32[u], items[i], k, excluded,
                                   None if margin is None else margin[u], select)
        return scores, torch.where(rows < 0, -1, rows + item_range.start)

    precision = "bf16" if compute == torch.bfloat16 else "ieee"
    workers = len(user_ranges) * len(item_ranges)
    with matmul_precision(precision), ThreadPoolExecutor(workers) as pool:
        futures = [[pool.submit(scan_block, u, i) for i in item_ranges] for u in user_ranges]
        parts = [[f.result() for f in row] for row in futures]
    merged = [merge(torch.cat([s for s, _ in row], 1), torch.cat([r for _, r in row], 1), k)
              for row in parts]
    return torch.cat([s for s, _ in merged]), torch.cat([r for _, r in merged])
