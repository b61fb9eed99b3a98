"""`dislike_hr@10`: the share of a user's held-out rejected items in its top 10, on a case with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rodpo_dist.data import Contexts
from rodpo_dist.eval.dislikes import dislike_hits, dislike_metric, dislike_rates
from rodpo_dist.runtime import Runtime


class Constant(torch.nn.Module):
    """Every state is 1: an item's score is its (1-d) table entry, so the ranking is known."""

    def forward(self, seq):
        from stand_ins import Output

        return Output(torch.ones(*seq.shape, 1), torch.zeros(()))


def test_dislike_hits_counts_rejected_items_in_the_list():
    hits, totals = dislike_hits(np.array([[3, 4, 5], [7, 8, 9]]), [np.array([5, 6]), np.array([1, 2, 3])])
    assert hits.tolist() == [1, 0] and totals.tolist() == [2, 3]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_dislike_rate_on_a_constructed_case(batch_size):
    n = 30
    table = torch.zeros(n + 1, 1)
    table[1:, 0] = -torch.arange(1, n + 1, dtype=torch.float32)  # item 1 scores highest, then 2, ...
    contexts = Contexts(np.array([1, 2, 3, 4]),
                        [np.array([1, 2]), np.array([5]), np.array([3]), np.array([1])],
                        np.array([20, 21, 22, 23]))
    # top 10: user 1 -> 3..12 (history 1, 2 excluded); user 2 -> 1..4, 6..11; user 4 -> 2..11
    rejected = [np.array([5, 20]), np.array([1, 11, 12]), np.array([], dtype=np.int64), np.array([1, 2, 3, 30])]
    users, rates = dislike_rates(Constant(), table, contexts, rejected, k=10, max_len=5, batch_size=batch_size,
                                 rt=Runtime.create("cpu"))
    assert users.tolist() == [1, 2, 4]  # user 3 has no held-out rejection: not counted
    assert rates == pytest.approx([1 / 2, 2 / 3, 2 / 4])
    metric = dislike_metric(rates)
    assert metric["dislike_hr@10"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 4) / 3) and metric["dislike_users"] == 3
