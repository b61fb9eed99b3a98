import numpy as np
import torch

from rodpo_dist.eval.evaluate import Contexts
from rodpo_dist.train.pool import CandidatePool
from rodpo_dist.train.runtime import Runtime


class BagOfItems(torch.nn.Module):
    """User state = mean of the history's item vectors: enough to check the pool's bookkeeping."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def user_state(self, seq: torch.Tensor) -> torch.Tensor:
        mask = (seq > 0).float()[..., None]
        return (self.table[seq] * mask).sum(1) / mask.sum(1).clamp_min(1)


def _contexts(rng, n_users, n_items):
    hist = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 12), replace=False) for _ in range(n_users)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, n_items + 1), h)) for h in hist])
    return Contexts(np.arange(1, n_users + 1), hist, targets)


def test_pool_matches_brute_force_and_excludes_history_and_target():
    rng = np.random.default_rng(0)
    n_items, k = 97, 13
    table = torch.randn(n_items + 1, 8, generator=torch.Generator().manual_seed(0))
    ctx = _contexts(rng, 37, n_items)
    model = BagOfItems(table)
    pool = CandidatePool(ctx, k)
    stats = pool.refresh(model, table, step=0, max_len=5, batch_size=8, rt=Runtime(torch.device("cpu")))
    assert pool.ids.dtype == torch.int32 and stats.size_mb > 0
    for row in range(len(ctx)):
        seq, _, _ = ctx.batch([row], 5)
        scores = table[1:] @ model.user_state(seq)[0]
        banned = set(ctx.histories[row].tolist()) | {int(ctx.targets[row])}
        order = [i + 1 for i in torch.argsort(scores, descending=True).tolist() if i + 1 not in banned][:k]
        assert pool.ids[row].tolist() == order
        assert not banned & set(pool.ids[row].tolist())


def test_refresh_schedule():
    pool = CandidatePool(Contexts(np.array([1]), [np.array([1])], np.array([2])), 1)
    assert pool.due(0, 10)
    pool.refreshed_at = 0
    assert not pool.due(9, 10) and pool.due(10, 10)
