"""The dislike rate: how many of a user's held-out rejected items a model puts in its top K.

`dislike_hr@k` of a user is the share of its held-out observed rejections (made at or after its
validation target; training never saw them: `data.rejections`) that the model ranks in its top k,
the user's history excluded as in every ranking; averaged over the users that have at least one.
Lower is better: a model that learned what the user turns down ranks such items lower. Users are
scored with the same loop as evaluation (`catalog.top_items`), only the top k kept.
"""

from __future__ import annotations

import numpy as np
import torch

from rodpo_dist.data.batching import sorted_batches
from rodpo_dist.data.contexts import Contexts
from rodpo_dist.eval.catalog import ScoringBatch, top_items
from rodpo_dist.runtime import Runtime

DISLIKE_K = 10


def dislike_hits(top_ids: np.ndarray, rejected: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(hits, totals) per row: how many of the row's `rejected` items are in its `top_ids` [B, k] list,
    and how many it has."""
    hits = np.array([np.isin(r, ids).sum() for ids, r in zip(top_ids, rejected)], dtype=np.int64)
    return hits, np.fromiter((len(r) for r in rejected), dtype=np.int64, count=len(rejected))


def dislike_rates(model: torch.nn.Module, item_table: torch.Tensor, contexts: Contexts, rejected: list[np.ndarray],
                  *, k: int, max_len: int, batch_size: int, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """(users, per-user dislike rate) over the contexts whose user has held-out rejections (`rejected[i]`
    for context i); a collective with several ranks (every rank passes the same contexts)."""
    has = np.flatnonzero([len(r) > 0 for r in rejected])
    rates = np.zeros(len(contexts), dtype=np.float64)
    sub = Contexts(contexts.users[has], [contexts.histories[i] for i in has], contexts.targets[has])

    def batches():
        for index in sorted_batches(sub.lengths(), batch_size):
            seq, exclude, _ = sub.batch(index, max_len)
            yield ScoringBatch(seq, exclude, meta=np.asarray(index))

    for batch, top in top_items(model, item_table, k, batches(), rt):
        index = batch.meta
        hits, totals = dislike_hits(top.ids.cpu().numpy(), [rejected[has[i]] for i in index])
        rates[has[index]] = hits / totals
    return contexts.users[has], rates[has]


def dislike_metric(rates: np.ndarray, k: int = DISLIKE_K) -> dict[str, float]:
    """{"dislike_hr@k": mean over the users with held-out rejections, "dislike_users": how many}."""
    return {f"dislike_hr@{k}": float(rates.mean()) if len(rates) else float("nan"), "dislike_users": float(len(rates))}
