"""`Recommender` against evaluation's ranking and a brute-force score of the same histories."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from rodpo_dist.config import saved_config
from rodpo_dist.data import load_dataset
from rodpo_dist.data.contexts import left_pad
from rodpo_dist.eval.evaluate import rank_targets
from rodpo_dist.serve import ItemIds, Recommender, RequestError

K = 10


@pytest.fixture(scope="module")
def demo(demo_run):
    cfg = saved_config(demo_run.checkpoint)
    return Recommender.from_checkpoint(demo_run.checkpoint), load_dataset(demo_run.data, cfg.data.modalities), cfg


def brute_force(rec: Recommender, history: np.ndarray, k: int) -> tuple[list[int], torch.Tensor]:
    """Top-k internal ids and scores of one history scored alone over the whole table."""
    with torch.no_grad():
        state = rec.model(left_pad([history], min(len(history), rec.max_len))).hidden[0, -1]
    scores = rec.item_table @ state
    scores[0] = float("-inf")
    scores[torch.as_tensor(history)] = float("-inf")
    top = scores.topk(k)
    return top.indices.tolist(), top.values


def test_top_items_are_evaluations_ranking(demo):
    rec, data, cfg = demo
    histories = data.valid.histories
    recs = rec.recommend([h.tolist() for h in histories], K)  # synthetic catalog: raw ids = internal ids
    ranks = rank_targets(rec.model, rec.item_table, data.valid, max_len=cfg.model.max_len, list_len=K,
                         batch_size=cfg.eval.batch_size, rt=rec.rt)
    hits = 0
    for r, history, target, rank in zip(recs, histories, data.valid.targets, ranks.tolist()):
        assert len(r.items) == K and not set(r.items) & set(history.tolist())
        assert r.scores == sorted(r.scores, reverse=True)
        if rank < K:
            assert r.items[rank] == target
            hits += 1
        else:
            assert target not in r.items
    assert hits > 0  # the check above is not vacuous


def test_top_items_equal_a_brute_force_ranking(demo):
    rec, data, _ = demo
    histories = [*data.test.histories[:20], np.arange(1, 13)]  # one longer than max_len (8)
    for r, history in zip(rec.recommend([h.tolist() for h in histories], K), histories):
        ids, scores = brute_force(rec, history, K)
        assert r.items == ids
        torch.testing.assert_close(torch.tensor(r.scores), scores, rtol=1e-5, atol=1e-5)


def test_raw_ids_of_an_interaction_file(interactions_run):
    rec = Recommender.from_checkpoint(interactions_run.checkpoint)
    assert rec.item_ids.raw[:2] == ["sku-000", "sku-001"]
    history = ["sku-003", "sku-017", "sku-030"]
    (r,) = rec.recommend([history], 5)
    assert all(isinstance(i, str) and i.startswith("sku-") for i in r.items) and not set(r.items) & set(history)
    ids, _ = brute_force(rec, np.array([rec.item_ids.internal(i) for i in history]), 5)
    assert r.items == rec.item_ids.to_raw(np.array(ids))


def test_bad_histories_are_named(demo):
    rec, _, _ = demo
    with pytest.raises(RequestError, match=r"^history 1: unknown item id 'B00XYZ'$"):
        rec.recommend([[1, 2], [3, "B00XYZ"]], K)
    with pytest.raises(RequestError, match=r"^history 0: unknown item id 151$"):
        rec.recommend([[151]], K)  # past the catalog
    with pytest.raises(RequestError, match=r"^history 0: empty history$"):
        rec.recommend([[]], K)
    with pytest.raises(RequestError, match=r"^history 0: the history must be a list of item ids, got str$"):
        rec.recommend(["12"], K)
    with pytest.raises(RequestError, match=r"^k=151 is larger than the catalog \(150 items\)$"):
        rec.recommend([[1]], 151)
    with pytest.raises(RequestError, match=r"^history 0: k=149 but only 148 catalog items are not in the history$"):
        rec.recommend([[1, 2, 2]], 149)


def test_skipped_unknown_items_are_logged(demo, caplog):
    rec, _, _ = demo
    with caplog.at_level(logging.WARNING):
        (r,) = rec.recommend([[4, "nope", 9]], K, skip_unknown=True)
    assert "history 0: unknown item id 'nope' skipped" in caplog.text
    assert r == rec.recommend([[4, 9]], K)[0]
    with caplog.at_level(logging.WARNING):  # a cold-start history: no recommendation, the others as alone
        cold, known = rec.recommend([["nope"], [4, 9]], K, skip_unknown=True)
    assert "history 0: no known item id in the history: no recommendation" in caplog.text
    assert cold == ([], []) and known == r
    with pytest.raises(RequestError, match=r"^history 0: unknown item id 'nope'$"):
        rec.recommend([["nope"]], K)


def test_item_ids_match_by_string_form():
    ids = ItemIds(3, ["a", "17", "c"])
    assert [ids.internal(x) for x in ("17", 17, np.int64(17), "a", "x", True, 1.0, None)] == [2, 2, 2, 1, None, None,
                                                                                              None, None]
    identity = ItemIds(3)
    assert [identity.internal(x) for x in (1, "3", np.int64(2), 0, 4, "x")] == [1, 3, 2, None, None, None]
    assert identity.to_raw(np.array([3, 1])) == [3, 1] and ids.all_raw() == ["a", "17", "c"]
