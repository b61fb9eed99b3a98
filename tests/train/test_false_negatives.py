"""False-negative accounting by pool rank, and liked-but-unobserved NDCG, on a hand-made truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rodpo_dist.data import Contexts, GroundTruth
from rodpo_dist.eval.truth import liked_ndcg
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.false_negatives import FalseNegativeCounter, bin_of, pool_rates
from stand_ins import PrefixMean


def _truth(relevant: dict[int, set[int]], n_users=3, n_items=8) -> GroundTruth:
    """Utility 1 for the listed (user, item) pairs, 0 otherwise; threshold 0.5."""
    from rodpo_dist.data.synthetic import UTIL_SCALE

    factors = np.zeros((n_items + 1, n_items + 1))
    np.fill_diagonal(factors, 1.0)
    users = np.zeros((n_users + 1, n_items + 1))
    for u, items in relevant.items():
        users[u, list(items)] = 1.0 / UTIL_SCALE
    return GroundTruth(users, factors, np.zeros(n_items + 1), np.full(n_users + 1, 0.5), 1.0, 0)


def test_rank_bins():
    assert bin_of(np.array([0, 1, 4, 5, 19, 20, 99, -1])).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]


def test_counter_counts_every_negative_by_the_bin_it_came_from():
    truth = _truth({1: {2, 3}, 2: {5}})
    counter = FalseNegativeCounter()
    counter.add(truth, np.array([1, 2]), np.array([[2, 4], [5, 6]]), np.array([[0, 3], [25, -1]]))
    counter.add(truth, np.array([1]), np.array([[3, 7]]), np.array([[0, 1]]))
    rates = FalseNegativeCounter.rates(counter.counts, k=50)
    assert rates["false_negative_rate"] == pytest.approx(3 / 6)
    assert rates["false_negative_rate/1"] == 1.0  # ranks 0, 0: items 2 and 3, both liked by user 1
    assert rates["false_negative_rate/2-5"] == 0.0  # items 4, 7
    assert rates["false_negative_rate/21-50"] == 1.0 and rates["false_negative_rate/random"] == 0.0
    assert "false_negative_rate/6-20" not in rates


def test_random_negatives_keep_their_bin_whatever_the_pool_size():
    """With a pool shorter than the last rank bin (k = 20: no 21-k bin), negatives not drawn from a pool are
    still reported as `random`, not under another bin's name."""
    truth = _truth({1: {2, 3}})
    counter = FalseNegativeCounter()
    counter.add(truth, np.array([1]), np.array([[2, 4, 5, 6]]), np.full((1, 4), -1))
    for k in (5, 20, 50):
        assert FalseNegativeCounter.rates(counter.counts, k=k) == {"false_negative_rate": 0.25,
                                                                   "false_negative_rate/random": 0.25}


def test_pool_rates_by_rank():
    truth = _truth({1: {2, 3}, 2: {5}})
    ids = torch.tensor([[2, 4, 3, -1, -1, -1], [6, 5, 1, 7, 8, -1]], dtype=torch.int32)
    rates = pool_rates(truth, np.array([1, 2]), ids)
    # rank 1: items 2 (liked), 6; ranks 2-5: 4, 3 (liked) | 5 (liked), 1, 7, 8; rank 6: empty slots only
    assert rates == {"pool_false_negative_rate/1": 0.5, "pool_false_negative_rate/2-5": pytest.approx(2 / 6)}


def test_liked_ndcg_by_hand():
    """Items 1..8 as one-hot vectors, user state = mean of its history's vectors plus a preference."""
    truth = _truth({1: {5, 6}, 2: {7}})
    table = torch.zeros(9, 9)
    table[1:, 1:] = torch.eye(8) * torch.arange(8, 0, -1, dtype=torch.float)[:, None]  # item i scores 9 - i on itself
    table[1:, 0] = torch.arange(8, 0, -1, dtype=torch.float) * 0.01  # a small shared direction: higher ids rank lower
    model = PrefixMean(table)
    ctx = Contexts(np.array([1, 2]), [np.array([1]), np.array([2])], np.array([3, 4]))
    # the state is the history item's vector: every other item scores only on the shared direction, in id order,
    # so user 1's top 3 (items 1 and 3 excluded) is 2, 4, 5 -> liked at rank 3; user 2's top 3 is 1, 3, 5 -> none
    got = liked_ndcg(model, table, ctx, truth, ks=[2, 3], max_len=4, batch_size=8, rt=Runtime(torch.device("cpu")))
    ideal_1 = 1 + 1 / np.log2(3)  # two liked unobserved items could fill ranks 1 and 2
    assert got[3] == pytest.approx(((1 / np.log2(4)) / ideal_1 + 0.0) / 2)
    assert got[2] == 0.0  # the liked item sits at rank 3: NDCG@2 of the same ranking sees none


def test_liked_unobserved_stops_counting_at_its_cap(monkeypatch):
    from rodpo_dist.eval import truth as truth_module

    monkeypatch.setattr(truth_module, "ITEM_BLOCK", 2)  # blocks [1, 2], [3, 4], ...: the early stop is reached
    truth = _truth({1: {2, 5, 6, 7}, 2: {3, 4, 8}})
    users, exclude = np.array([1, 2]), torch.tensor([[5, -1], [-1, -1]])
    assert truth_module.liked_unobserved(truth, users, exclude, 8).tolist() == [3, 3]
    assert truth_module.liked_unobserved(truth, users, exclude, 8, cap=1).tolist() == [1, 1]
    assert truth_module.liked_unobserved(truth, users, exclude, 8, cap=2).tolist() == [2, 2]


def test_held_out_items_in_the_pool_by_rank():
    from rodpo_dist.train.false_negatives import held_out_rates

    ids = torch.tensor([[4, 9, 2], [7, 1, 3], [5, 6, 8]], dtype=torch.int32)
    rates = held_out_rates(ids, np.array([4, 3, 11]))  # context 0: rank 1; context 1: rank 3; context 2: absent
    assert rates == {"pool_holds_held_out": pytest.approx(2 / 3), "pool_holds_held_out/1": pytest.approx(1 / 3),
                     "pool_holds_held_out/2-3": pytest.approx(1 / 3)}


def test_relevant_matrix_is_is_relevant_of_every_pair():
    from rodpo_dist.config.sections import SyntheticConfig
    from rodpo_dist.data.synthetic import SyntheticCatalog

    catalog = SyntheticCatalog(SyntheticConfig(num_items=300, num_users=40, seed=4))
    catalog.interactions()  # fills the thresholds
    users, items = np.arange(1, 41), np.arange(0, 301)
    pairwise = catalog.truth.is_relevant(users, np.broadcast_to(items, (40, 301)))
    assert np.array_equal(catalog.truth.relevant_matrix(users, items), pairwise) and pairwise.any()
