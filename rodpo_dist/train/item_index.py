"""An approximate top-K for the candidate pool: an IVF inner-product index over the item table (faiss).

The pool is a set of candidates to sample negatives from, not a metric: an index that finds most of
the exact top-K is enough, and after its build (k-means on a sample, then one pass to file every item
under its nearest centroid) a query scores `probe` lists of about N / lists items instead of all N.
Evaluation and `recommend` stay exact (`eval.catalog`). Every rank builds and searches the whole
index (no collective).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rodpo_kernels import TopK


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("pool.index: ivf needs the package faiss-cpu (pip install faiss-cpu==1.15.1, or "
                          "pip install 'rodpo-dist[scale]'); or set pool.index: exact") from exc
    return faiss


class ItemIndex:
    """IVF-flat inner-product index over item ids 1..N (`table` [N+1, d], row 0 padding left out)."""

    def __init__(self, table: torch.Tensor, lists: int = 0, probe: int = 16, seed: int = 0) -> None:
        faiss = _faiss()
        faiss.omp_set_num_threads(torch.get_num_threads())
        items = np.ascontiguousarray(table[1:].detach().float().cpu().numpy())
        n, dim = items.shape
        self.lists = max(1, min(n, lists or round(4 * math.sqrt(n))))  # never more lists than items
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.lists, faiss.METRIC_INNER_PRODUCT)
        sample = items[np.sort(np.random.default_rng(seed).choice(n, min(n, 64 * self.lists), replace=False))]
        self.index.cp.seed = seed
        self.index.train(sample)
        self.index.add(items)
        self.index.nprobe = min(probe, self.lists)

    def topk(self, states: torch.Tensor, k: int, exclude: torch.Tensor) -> TopK:
        """Top-`k` (scores, ids) of `states` [C, d] among the index's candidates, `exclude` [C, H] (-1
        pads) removed; slots the index could not fill are id -1 with score -inf (as `TopK`)."""
        wanted = k + exclude.shape[1]
        scores, rows = self.index.search(np.ascontiguousarray(states.detach().float().cpu().numpy()), wanted)
        ids = torch.from_numpy(rows).long() + 1  # -1 (no candidate) becomes 0
        scores = torch.from_numpy(scores)
        banned = (ids[:, :, None] == exclude.cpu()[:, None, :]).any(-1) | (ids == 0)
        scores = scores.masked_fill(banned, float("-inf"))
        top = scores.topk(k, dim=1)
        ids = ids.gather(1, top.indices).masked_fill(top.values == float("-inf"), -1)
        return TopK(top.values.to(states.device), ids.to(states.device))
