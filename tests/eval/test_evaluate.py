"""Full-ranking evaluation against a brute-force ranking of the whole catalog (ties included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rodpo_dist.data import Contexts
from rodpo_dist.eval.evaluate import evaluate
from rodpo_dist.eval.metrics import MISS
from rodpo_dist.runtime import Runtime
from stand_ins import PrefixMean


def _problem(n_items=60, n_users=41, seed=0):
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(n_items + 1, 6, generator=gen).round(decimals=1)  # coarse values: many exact ties
    table[0] = 0
    table[10:20] = table[20:30]  # duplicated items tie exactly with each other
    rng = np.random.default_rng(seed)
    histories = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 12), replace=False) for _ in range(n_users)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(1, n_items + 1), h)) for h in histories])
    return table, Contexts(np.arange(1, n_users + 1), histories, targets)


def brute_force_rank(table: torch.Tensor, model: PrefixMean, history: np.ndarray, target: int, max_len: int) -> int:
    """Items (not in the history, not the target) scoring at least as high as the target."""
    state = model.user_state(torch.as_tensor(history[-max_len:])[None])[0]
    scores = table[1:] @ state
    ids = torch.arange(1, len(table))
    keep = ~torch.isin(ids, torch.as_tensor(history)) & (ids != target)
    return int((scores[keep] >= scores[target - 1]).sum())


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_ranks_and_metrics_equal_the_brute_force_ranking(batch_size):
    table, ctx = _problem()
    model = PrefixMean(table)
    metrics, ranks = evaluate(model, table, ctx, ks=[1, 5, 10], max_len=8, batch_size=batch_size,
                              rt=Runtime(torch.device("cpu")))
    expected = np.array([brute_force_rank(table, model, h, int(t), 8) for h, t in zip(ctx.histories, ctx.targets)])
    got = ranks.numpy()
    inside = expected < 10  # past the scored list (max(ks) + 1 items) a rank is MISS
    np.testing.assert_array_equal(got[inside], expected[inside])
    assert (got[~inside] == MISS).all() or (got[~inside] >= 10).all()
    for k in (1, 5, 10):
        hit = expected < k
        assert metrics[f"hr@{k}"] == pytest.approx(hit.mean())
        assert metrics[f"ndcg@{k}"] == pytest.approx(np.where(hit, 1 / np.log2(expected + 2), 0).mean())
        assert metrics[f"mrr@{k}"] == pytest.approx(np.where(hit, 1 / (expected + 1), 0).mean())
    assert (expected > 0).any() and len(set(expected.tolist())) > 3  # the case is not degenerate
