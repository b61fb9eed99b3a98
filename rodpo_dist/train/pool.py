"""The dynamic top-K candidate pool of RoDPO.

For every training context (a history prefix and its target item) the pool holds the K
highest-scoring items under a model, with the target and the whole history excluded. It is built
with the pool-scoring op, the catalog sharded over ranks (item tiles, O(contexts x K) state: the contexts x items score matrix is
never formed) and stored compactly as int32 ids plus their float32 scores.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from rodpo_dist.eval.catalog import catalog_topk
from rodpo_dist.eval.evaluate import Contexts
from rodpo_dist.train.runtime import Runtime


@dataclass
class RefreshStats:
    seconds: float
    peak_rss_mb: float
    size_mb: float


class CandidatePool:
    def __init__(self, contexts: Contexts, k: int) -> None:
        self.contexts = contexts
        self.k = k
        self.ids = torch.full((len(contexts), k), -1, dtype=torch.int32)
        self.scores = torch.full((len(contexts), k), float("-inf"))
        self.refreshed_at: int | None = None

    @torch.no_grad()
    def refresh(self, model: torch.nn.Module, item_table: torch.Tensor, *, step: int, max_len: int,
                batch_size: int, rt: Runtime) -> RefreshStats:
        """Recompute every context's top-K under `model` and `item_table` ([N+1, d], row 0 padding).

        A collective with several ranks: each scores its slice of the catalog (`catalog_topk`).
        """
        tic = time.perf_counter()
        was_training = model.training
        model.eval()
        items = item_table[1:].to(rt.device)
        for start in range(0, len(self.contexts), batch_size):
            stop = min(start + batch_size, len(self.contexts))
            seq, exclude, _ = self.contexts.batch(range(start, stop), max_len, exclude_target=True)
            top = catalog_topk(model.user_state(seq.to(rt.device)).float(), items, self.k, exclude.to(rt.device), rt)
            self.ids[start:stop] = top.ids.to(torch.int32).cpu()
            self.scores[start:stop] = top.scores.float().cpu()
        model.train(was_training)
        self.refreshed_at = step
        size_mb = (self.ids.numel() * 4 + self.scores.numel() * 4) / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return RefreshStats(time.perf_counter() - tic, peak, size_mb)

    def due(self, step: int, refresh_steps: int) -> bool:
        return self.refreshed_at is None or step - self.refreshed_at >= refresh_steps

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [b, K] with -1 for empty slots, scores [b, K]) of the given contexts."""
        return self.ids[index].long(), self.scores[index]
