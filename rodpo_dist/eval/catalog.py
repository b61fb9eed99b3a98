"""Top-K over the whole catalog, the item table sharded over ranks, and the one scoring loop that
evaluation and the candidate pool share.

Each rank scores the same users against its own contiguous slice of the items (1/world of the
work), the per-rank top-K lists are all-gathered and merged: the slices are disjoint and every
score is computed exactly as on one process, so the merged lists equal the single-process ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from rodpo_dist.runtime import Runtime
from rodpo_kernels import TopK, merge_topk, topk_scores


Search = Callable[[torch.Tensor, int, torch.Tensor], TopK]
"""(states [C, d], k, exclusions [C, H]) -> the top-k of each state."""


class ScoringBatch(NamedTuple):
    """Model inputs [b, W], exclusions [C, H] (-1 pads) and which states to score: (rows, cols) of
    the hidden states, or None for the last position of every row (then C = b)."""

    seq: torch.Tensor
    exclude: torch.Tensor
    positions: tuple[torch.Tensor, torch.Tensor] | None = None
    meta: Any = None
    """The caller's own bookkeeping, handed back with the result."""


def catalog_slice(num_items: int, rt: Runtime) -> tuple[int, int]:
    """Rows [start, stop) of an item table of `num_items` rows that this rank scores."""
    return num_items * rt.rank // rt.world_size, num_items * (rt.rank + 1) // rt.world_size


def catalog_topk(users: torch.Tensor, items: torch.Tensor, k: int, exclude: torch.Tensor, rt: Runtime,
                 id_offset: int = 1) -> TopK:
    """`topk_scores` of users [B, d] against items [N, d] (row r = item id r + id_offset), sharded."""
    start, stop = catalog_slice(items.shape[0], rt)
    local = topk_scores(users, items[start:stop], k, exclude=exclude, id_offset=id_offset + start)
    if rt.world_size == 1:
        return local
    scores = [torch.empty_like(local.scores) for _ in range(rt.world_size)]
    ids = [torch.empty_like(local.ids) for _ in range(rt.world_size)]
    dist.all_gather(scores, local.scores.contiguous())
    dist.all_gather(ids, local.ids.contiguous())
    return merge_topk([TopK(s, i) for s, i in zip(scores, ids)], k)


@torch.no_grad()
def top_items(model: torch.nn.Module, item_table: torch.Tensor, k: int, batches: Iterable[ScoringBatch],
              rt: Runtime, search: Search | None = None) -> Iterator[tuple[ScoringBatch, TopK]]:
    """Per batch, (the batch, the top-`k` catalog items (ids 1..N) of each selected state, exclusions removed).

    `item_table` is [N+1, d] with row 0 padding (never a candidate). The model runs in eval mode
    (restored afterwards). A collective with several ranks: every rank passes the same batches.
    `search(states, k, exclude)` replaces the exact sharded scan (e.g. an approximate index).
    """
    was_training = model.training
    model.eval()
    items = item_table[1:].to(rt.device)
    try:
        for batch in batches:
            hidden = model(batch.seq.to(rt.device)).hidden
            states = hidden[:, -1] if batch.positions is None else hidden[batch.positions]
            exclude = batch.exclude.to(rt.device)
            yield batch, (search(states.float(), k, exclude) if search is not None
                          else catalog_topk(states.float(), items, k, exclude, rt))
    finally:
        model.train(was_training)
