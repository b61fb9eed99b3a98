"""Top-K over the whole catalog with the item table sharded over ranks.

Each rank scores the same users against its own contiguous slice of the items (1/world of the
work), the per-rank top-K lists are all-gathered and merged: the slices are disjoint and every
score is computed exactly as on one process, so the merged lists equal the single-process ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rodpo_dist.train.runtime import Runtime
from rodpo_kernels import TopK, merge_topk, topk_scores


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
