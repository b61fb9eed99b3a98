"""The candidate pool against a brute-force ranking, its exclusions, state and schedule."""

import numpy as np
import pytest
import torch

from rodpo_dist.data import SplitData, TrainingContexts
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.pool import CandidatePool
from stand_ins import PrefixMean

CPU = Runtime(torch.device("cpu"))


def _contexts(positions: str, n_users=37, n_items=97, max_len=5) -> TrainingContexts:
    rng = np.random.default_rng(0)
    sequences = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(2, 12), replace=False) for _ in range(n_users)]
    return TrainingContexts.from_split(SplitData(np.arange(1, n_users + 1), sequences, -np.ones(n_users, int)),
                                       positions, max_len)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_pool_matches_brute_force_and_excludes_the_whole_training_sequence(positions):
    n_items, k = 97, 13
    table = torch.randn(n_items + 1, 8, generator=torch.Generator().manual_seed(0))
    ctx = _contexts(positions)
    model = PrefixMean(table)
    pool = CandidatePool(ctx, k)
    stats = pool.refresh(model, table, step=0, batch_size=8, rt=CPU)
    assert pool.ids.dtype == torch.int32 and stats.size_mb > 0
    for s in range(ctx.num_sequences):  # each context scored on its own: its prefix, laid out as in the window
        window = ctx.batch([s])
        for row, (col, cid) in enumerate(zip(window.cols.tolist(), window.context_ids.tolist())):
            prefix = window.seq.clone()
            prefix[:, col + 1:] = 0
            scores = table[1:] @ model(prefix).hidden[0, col]
            banned = set(ctx.sequences[s].tolist())
            order = [i + 1 for i in torch.argsort(scores, descending=True).tolist() if i + 1 not in banned][:k]
            assert pool.ids[cid].tolist() == order
            assert int(window.targets[row]) in banned


def test_state_round_trips_and_refuses_another_shape():
    ctx = _contexts("all")
    table = torch.randn(98, 8, generator=torch.Generator().manual_seed(1))
    pool = CandidatePool(ctx, 5)
    assert pool.state_dict() == {}  # nothing to save before the first refresh
    pool.refresh(PrefixMean(table), table, step=4, batch_size=16, rt=CPU)
    other = CandidatePool(ctx, 5)
    other.load_state_dict(pool.state_dict())
    assert torch.equal(other.ids, pool.ids) and torch.equal(other.scores, pool.scores) and other.refreshed_at == 4
    with pytest.raises(ValueError, match="pool.k"):
        CandidatePool(ctx, 6).load_state_dict(pool.state_dict())


def test_refresh_schedule():
    pool = CandidatePool(_contexts("last", n_users=1), 1)
    assert pool.due(0, 10)
    pool.refreshed_at = 0
    assert not pool.due(9, 10) and pool.due(10, 10)
