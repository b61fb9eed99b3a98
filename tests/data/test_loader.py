"""Reading prepared folders: split contents, batches, distributed exactly-once coverage, shuffling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from rodpo_dist.config import SyntheticConfig
from rodpo_dist.data import (DataError, iter_item_blocks, load_item_features, load_manifest, load_split,
                             sequence_loader)
from rodpo_dist.data.loader import collate
from rodpo_dist.data.synthetic import SyntheticCatalog


def test_leave_one_out_split(small_dir):
    train, valid, test = (load_split(small_dir, s) for s in ("train", "valid", "test"))
    assert train.users.tolist() == valid.users.tolist() == test.users.tolist() == list(range(1, 151))
    assert (train.targets == -1).all()
    for u in range(150):
        full = np.concatenate([test.sequences[u], [test.targets[u]]])
        assert len(full) >= 5
        np.testing.assert_array_equal(train.sequences[u], full[:-2])
        np.testing.assert_array_equal(valid.sequences[u], full[:-2])
        assert valid.targets[u] == full[-2] and test.targets[u] == full[-1]
        assert len(set(full.tolist())) == len(full)  # no repeated item within a user


def test_manifest_counts(small_dir):
    m = load_manifest(small_dir)
    assert (m.num_users, m.num_items) == (150, 200)
    assert [len(m.shards[g]) for g in ("train", "valid", "test", "items")] == [4, 4, 4, 4]
    assert m.num_interactions == sum(len(s) + 1 for s in load_split(small_dir, "test").sequences)
    assert m.to_dict()["item_id_range"] == [1, 200]


def test_item_features_match_generator(small_dir):
    feats = load_item_features(small_dir)
    cat = SyntheticCatalog(SyntheticConfig(num_items=200, num_users=150, max_seq_len=20, num_clusters=8))
    assert set(feats) == {"text", "image", "attr"}
    for name, mod in cat.modalities().items():
        np.testing.assert_array_equal(feats[name].numpy(), mod.rows(0, 201))
    assert feats["attr"].dtype == torch.long and feats["text"].dtype == torch.float32
    blocks = list(iter_item_blocks(small_dir, ["attr"]))
    assert [len(b["ids"]) for b in blocks][:5] == [16, 16, 16, 16, 16] and set(blocks[0]) == {"ids", "attr"}
    assert np.concatenate([b["ids"] for b in blocks]).tolist() == list(range(1, 201))


def test_unknown_modality_names_the_known_ones(small_dir):
    with pytest.raises(DataError, match=r"manifest\.json: unknown modality 'audio'; known: text, image, attr"):
        load_item_features(small_dir, ["audio"])


def test_collate_left_pads_and_truncates():
    batch = collate([{"seq": np.array([1, 2, 3, 4, 5]), "meta": {"user": 7, "target": 9}},
                     {"seq": np.array([6]), "meta": {"user": 8, "target": -1}}], max_len=3)
    assert batch["seq"].tolist() == [[3, 4, 5], [0, 0, 6]]
    assert batch["user"].tolist() == [7, 8] and batch["target"].tolist() == [9, -1]
    assert batch["seq"].dtype == torch.long
    short = collate([{"seq": np.array([1, 2]), "meta": {"user": 1, "target": 3}},
                     {"seq": np.array([4]), "meta": {"user": 2, "target": 5}}], max_len=10)
    assert short["seq"].tolist() == [[1, 2], [0, 4]]  # padded to the longest in the batch only


def _users(loader) -> list[int]:
    return [u for batch in loader for u in batch["user"].tolist()]


def test_two_ranks_two_workers_read_every_sample_exactly_once(small_dir):
    seen = Counter()
    for rank in range(2):
        seen.update(_users(sequence_loader(small_dir, "train", 8, 10, shuffle=True, shuffle_buffer=16, seed=3,
                                           epoch=1, num_workers=2, rank=rank, world_size=2)))
    assert sorted(seen) == list(range(1, 151)) and set(seen.values()) == {1}


def test_batches_have_expected_shapes(small_dir):
    batches = list(sequence_loader(small_dir, "test", 32, 6, shuffle=False))
    assert [len(b["user"]) for b in batches] == [32, 32, 32, 32, 22]
    assert batches[0]["seq"].shape == (32, 6) and (batches[0]["target"] > 0).all()
    test = load_split(small_dir, "test")
    assert batches[0]["seq"][0].tolist() == test.sequences[0][-6:].tolist()


def test_shuffle_is_deterministic_per_seed_and_epoch(small_dir):
    def order(seed, epoch, workers=0):
        return _users(sequence_loader(small_dir, "train", 16, 10, shuffle=True, shuffle_buffer=32, seed=seed,
                                      epoch=epoch, num_workers=workers))

    first = order(0, 0)
    assert first == order(0, 0) and sorted(first) == list(range(1, 151))
    assert first != order(0, 1) and first != order(1, 0)
    assert order(0, 2, workers=2) == order(0, 2, workers=2)
    assert _users(sequence_loader(small_dir, "train", 16, 10, shuffle=False)) == list(range(1, 151))
