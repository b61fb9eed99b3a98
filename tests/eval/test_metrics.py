import math

import torch

from rodpo_dist.eval.metrics import MISS, ranking_metrics, target_ranks


def test_ranks_from_sorted_lists_with_ties_and_misses():
    ids = torch.tensor([[7, 3, 9, 4], [1, 2, 3, 4], [5, 6, 8, -1], [2, 9, 3, 1]])
    scores = torch.tensor([[9.0, 5.0, 5.0, 1.0], [4.0, 3.0, 2.0, 1.0], [3.0, 2.0, 1.0, float("-inf")],
                           [2.0, 2.0, 2.0, 2.0]])
    targets = torch.tensor([3, 4, 10, 9])
    ranks = target_ranks(ids, scores, targets)
    # target 3 ties with 9: pessimistic rank 2; target 4 last: rank 3; 10 absent: miss; all tied: rank 3
    assert ranks.tolist() == [2, 3, MISS, 3]


def test_metrics_against_hand_computed_values():
    ranks = torch.tensor([0, 2, 7, MISS])
    m = ranking_metrics(ranks, [1, 5, 10])
    assert m["hr@1"] == 0.25
    assert m["hr@5"] == 0.5
    assert m["hr@10"] == 0.75
    assert math.isclose(m["ndcg@5"], (1.0 + 1.0 / math.log2(4)) / 4)
    assert math.isclose(m["ndcg@10"], (1.0 + 1.0 / math.log2(4) + 1.0 / math.log2(9)) / 4)
    assert math.isclose(m["mrr@10"], (1.0 + 1.0 / 3 + 1.0 / 8) / 4)


def test_constant_scores_earn_nothing():
    ids = torch.arange(1, 12).repeat(3, 1)
    scores = torch.zeros(3, 11)
    ranks = target_ranks(ids, scores, torch.tensor([1, 5, 11]))
    assert (ranks == 10).all()
    assert ranking_metrics(ranks, [10])["hr@10"] == 0.0
