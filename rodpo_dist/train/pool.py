"""The dynamic top-K candidate pool of RoDPO.

For every training context the pool holds the K highest-scoring items under a model, the user's
whole training sequence (its known positives, the target among them) excluded. It is refreshed
with the shared scoring loop (`eval.catalog.top_items`: one forward pass per training window gives
all its contexts' states; the catalog is scored in item tiles, sharded over ranks, never as a
contexts x items matrix) over windows of similar length, and stored compactly as int32 ids with
their float32 scores. The pool saves and restores its own state (`state_dict`).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rodpo_dist.data.batching import sorted_batches
from rodpo_dist.data.contexts import TrainingContexts
from rodpo_dist.eval.catalog import ScoringBatch, top_items
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.item_index import ItemIndex


@dataclass
class RefreshStats:
    seconds: float
    peak_rss_mb: float
    size_mb: float


class CandidatePool:
    def __init__(self, contexts: TrainingContexts, k: int, index: dict[str, int] | None = None) -> None:
        """`index`: None for the exact top-K, or the settings of an approximate `ItemIndex` (lists, probe),
        rebuilt from the item table at every refresh."""
        self.contexts = contexts
        self.k = k
        self.index = index
        self.ids = torch.full((len(contexts), k), -1, dtype=torch.int32)
        self.scores = torch.full((len(contexts), k), float("-inf"))
        self.refreshed_at: int | None = None

    def refresh(self, model: torch.nn.Module, item_table: torch.Tensor, *, step: int, batch_size: int,
                rt: Runtime, sequences: np.ndarray | None = None) -> RefreshStats:
        """Recompute the top-K under `model` and `item_table` ([N+1, d], row 0 padding) of the contexts
        of training `sequences` (default: all), leaving the other rows as they are.

        `batch_size` counts training windows. A collective with several ranks (all pass the same sequences).
        """
        tic = time.perf_counter()
        if sequences is None:
            sequences = np.arange(self.contexts.num_sequences)
        order = sorted_batches(self.contexts.lengths()[sequences], batch_size)
        windows = (self.contexts.batch(sequences[index]) for index in order)
        scoring = (ScoringBatch(w.seq, w.exclude, (w.rows, w.cols), w.context_ids) for w in windows)
        search = ItemIndex(item_table, **self.index).topk if self.index is not None else None
        for batch, top in top_items(model, item_table, self.k, scoring, rt, search):
            self.ids[batch.meta] = top.ids.to(torch.int32).cpu()
            self.scores[batch.meta] = top.scores.float().cpu()
        self.refreshed_at = step
        size_mb = (self.ids.numel() * 4 + self.scores.numel() * 4) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return RefreshStats(time.perf_counter() - tic, peak, size_mb)

    def due(self, step: int, refresh_steps: int) -> bool:
        return self.refreshed_at is None or step - self.refreshed_at >= refresh_steps

    def rows(self, context_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [b, K] with -1 for empty slots, scores [b, K]) of the given contexts."""
        return self.ids[context_ids].long(), self.scores[context_ids]

    def state_dict(self) -> dict[str, Any]:
        if self.refreshed_at is None:
            return {}
        return {"ids": self.ids, "scores": self.scores, "refreshed_at": torch.tensor(self.refreshed_at)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if tuple(state["ids"].shape) != tuple(self.ids.shape):
            raise ValueError(f"saved candidate pool has shape {tuple(state['ids'].shape)}, this run's is "
                             f"{tuple(self.ids.shape)} (other contexts or pool.k)")
        self.ids, self.scores = state["ids"], state["scores"]
        self.refreshed_at = int(state["refreshed_at"])
