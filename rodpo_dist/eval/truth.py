"""Ranking against the ground truth of a synthetic catalog: how high a model ranks the items a user
likes but has never interacted with (the false negatives of implicit feedback).

`liked_ndcg@k`: binary NDCG@k of each user's top-k list (the observed history and the held-out
target excluded) with gain 1 for items the ground truth marks relevant, normalised by the best
possible list of that user's liked unobserved items; averaged over users. An alignment that
pushes liked-but-unobserved items down (what hard negatives do to false negatives) lowers it.
"""

from __future__ import annotations

import numpy as np
import torch

from rodpo_dist.data import GroundTruth
from rodpo_dist.data.batching import sorted_batches
from rodpo_dist.data.contexts import Contexts
from rodpo_dist.eval.catalog import ScoringBatch, top_items
from rodpo_dist.runtime import Runtime

ITEM_BLOCK = 65536


def liked_unobserved(truth: GroundTruth, users: np.ndarray, exclude: torch.Tensor, num_items: int,
                     cap: int | None = None) -> np.ndarray:
    """[B] count of items relevant to each user outside its `exclude` ids; with `cap`, min(count, cap),
    counting stops at the first item block where every user has reached it (a large catalog's users
    have thousands of liked items: one block, not the catalog)."""
    excluded = exclude.numpy()
    seen = (truth.is_relevant(users, np.maximum(excluded, 0)) & (excluded > 0)).sum(1)
    counts = np.zeros(len(users), dtype=np.int64)
    for lo in range(1, num_items + 1, ITEM_BLOCK):
        items = np.arange(lo, min(num_items, lo + ITEM_BLOCK - 1) + 1)
        counts += truth.relevant_matrix(users, items).sum(1)
        if cap is not None and (counts - seen >= cap).all():  # a lower bound already at the cap
            break
    return counts - seen if cap is None else np.minimum(counts - seen, cap)


def liked_ndcg(model: torch.nn.Module, item_table: torch.Tensor, contexts: Contexts, truth: GroundTruth, *,
               ks: list[int], max_len: int, batch_size: int, rt: Runtime) -> dict[int, float]:
    """Mean `liked_ndcg@k` over the contexts for each k in `ks` (see module docstring), from one ranking
    of the top max(ks); a collective with several ranks."""
    top_k = max(ks)
    discount = 1.0 / np.log2(np.arange(top_k) + 2.0)
    totals, num_items = dict.fromkeys(ks, 0.0), item_table.shape[0] - 1

    def batches():
        for index in sorted_batches(contexts.lengths(), batch_size):
            seq, exclude, _ = contexts.batch(index, max_len, exclude_target=True)
            yield ScoringBatch(seq, exclude, meta=(contexts.users[index], exclude))

    for batch, top in top_items(model, item_table, top_k, batches(), rt):
        users, exclude = batch.meta
        ids = top.ids.cpu().numpy()
        gains = (truth.is_relevant(users, np.maximum(ids, 0)) & (ids > 0)) * discount
        liked = liked_unobserved(truth, users, exclude, num_items, cap=top_k)
        for k in ks:
            ideal_len = np.minimum(liked, k)
            ideal = np.cumsum(discount)[np.maximum(ideal_len - 1, 0)] * (ideal_len > 0)
            dcg = gains[:, :k].sum(1)
            totals[k] += float(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0).sum())
    return {k: total / len(contexts) for k, total in totals.items()}
