"""The synthetic catalog: determinism, ground truth, exposure bias and learnability signal."""

from __future__ import annotations

import numpy as np
import pytest

from rodpo_dist.config import SyntheticConfig
from rodpo_dist.data.loader import load_split
from rodpo_dist.data.manifest import load_manifest
from rodpo_dist.data.prepare import prepare
from rodpo_dist.data.synthetic import GroundTruth, SyntheticCatalog


def _checksums(directory):
    m = load_manifest(directory)
    return [s.sha256 for group in m.shards.values() for s in group] + list(m.files.values())


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small_dir, data_config):
    prepare(data_config(), tmp_path / "again", progress=False)
    prepare(data_config(synthetic={"seed": 1}), tmp_path / "other", progress=False)
    assert _checksums(tmp_path / "again") == _checksums(small_dir)
    assert all(a != b for a, b in zip(_checksums(tmp_path / "other"), _checksums(small_dir)))


def test_item_features_do_not_depend_on_request_ranges():
    cat = SyntheticCatalog(SyntheticConfig(num_items=300, num_users=10))
    for name, mod in cat.modalities().items():
        whole = mod.rows(0, 301)
        assert (whole[0] == 0).all(), name
        np.testing.assert_array_equal(np.concatenate([mod.rows(0, 7), mod.rows(7, 150), mod.rows(150, 301)]), whole)


def test_ground_truth_relevance_and_exposure(small_dir):
    truth = GroundTruth.load(small_dir)
    cfg = SyntheticConfig(num_items=200, num_users=150)
    rng = np.random.default_rng(0)
    users = rng.integers(1, 151, size=500)
    items = rng.integers(1, 201, size=(500, 40))
    relevant = truth.is_relevant(users, items)
    assert abs(relevant.mean() - cfg.relevant_share) < 0.02
    assert abs(truth.is_exposed(users, items).mean() - cfg.exposure) < 0.03
    assert truth.relevant_unexposed_rate(users, items) > 0.5 * cfg.relevant_share * (1 - cfg.exposure)
    assert not truth.is_relevant(users, np.zeros((500, 3), dtype=np.int64)).any()  # padding
    # every consumed item was exposed to its user
    test = load_split(small_dir, "test")
    assert truth.is_exposed(test.users, test.targets).all()
    assert all(truth.is_exposed(np.full(len(s), u), s).all() for u, s in zip(test.users, test.sequences))


def test_false_negative_rate_is_the_share_of_negatives_the_user_likes_by_definition(small_dir):
    """Relevant = true utility (UTIL_SCALE x user . item factors + item bias) at or above the user's
    threshold, computed here pair by pair; padding (0) is never relevant."""
    from rodpo_dist.data.synthetic import UTIL_SCALE

    truth = GroundTruth.load(small_dir)
    rng = np.random.default_rng(3)
    users, items = rng.integers(1, 151, size=60), rng.integers(0, 201, size=(60, 8))
    by_hand = np.array([[i > 0 and UTIL_SCALE * float(truth.user_factors[u].astype(np.float64)
                                                      @ truth.item_factors[i].astype(np.float64))
                         + float(truth.item_bias[i]) >= float(truth.thresholds[u]) for i in row]
                        for u, row in zip(users, items)])
    assert 0 < by_hand.sum() < by_hand.size and (items == 0).any()  # both outcomes and padding occur
    np.testing.assert_array_equal(truth.is_relevant(users, items), by_hand)
    assert truth.false_negative_rate(users, items) == pytest.approx(by_hand.mean(), abs=1e-12)
    # a hand-made truth: user 1 likes items 2 and 3, user 2 likes item 5 (one-hot factors, threshold 0.5)
    factors = np.eye(6)
    made = GroundTruth(np.array([np.zeros(6), factors[2] + factors[3], factors[5]]) / UTIL_SCALE, factors,
                       np.zeros(6), np.full(3, 0.5), 1.0, 0)
    assert made.false_negative_rate(np.array([1, 2]), np.array([[2, 4, 0], [5, 5, 3]])) == pytest.approx(3 / 6)


def _ndcg10(scores: np.ndarray, history: list[np.ndarray], targets: np.ndarray) -> float:
    total = 0.0
    for row, (seen, target) in enumerate(zip(history, targets)):
        s = scores[row].astype(np.float64).copy()
        s[0], s[seen] = -np.inf, -np.inf
        rank = int((s > s[target]).sum())
        total += 1.0 / np.log2(rank + 2) if rank < 10 else 0.0
    return total / len(targets)


def test_true_affinity_ranks_far_above_popularity(tmp_path, data_config):
    """The learnability premise: the generative preferences predict the held-out item much better than popularity."""
    out = tmp_path / "demo"
    prepare(data_config(synthetic={"num_items": 1000, "num_users": 1000}, users_per_shard=50_000), out, progress=False)
    truth, test = GroundTruth.load(out), load_split(out, "test")
    pop = np.bincount(np.concatenate(test.sequences), minlength=1001).astype(np.float64)
    oracle = truth.utility_matrix(test.users, np.arange(1001))
    pop_ndcg = _ndcg10(np.broadcast_to(pop, oracle.shape), test.sequences, test.targets)
    oracle_ndcg = _ndcg10(oracle, test.sequences, test.targets)
    assert oracle_ndcg > 2 * pop_ndcg
