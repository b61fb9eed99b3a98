"""Length-aware batching: exactly-once coverage, determinism, resume, less padding, same losses."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from rodpo_dist.config import ModelConfig, MoEConfig
from rodpo_dist.data import sequence_loader
from rodpo_dist.data.batching import length_grouped_batches, padding_share, sorted_batches
from rodpo_dist.model import ItemEncoder, SASRec
from rodpo_dist.train.losses import chunked_cross_entropy


def _stream(small_dir, window, rank=0, world=1, workers=0, epoch=1, batch=8):
    return sequence_loader(small_dir, "train", batch, 12, shuffle=True, shuffle_buffer=16, seed=3, epoch=epoch,
                           num_workers=workers, rank=rank, world_size=world, length_window=window)


def _lengths(batch) -> np.ndarray:
    return (batch["seq"] > 0).sum(1).numpy()


def test_grouped_batches_cover_every_index_once_and_follow_the_seed():
    lengths = np.random.default_rng(0).integers(1, 50, size=1003)
    batches = length_grouped_batches(lengths, 16, 8, np.random.default_rng(5))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1003))
    assert sum(len(b) < 16 for b in batches) == 1 and len(batches) == -(-1003 // 16)  # as many as plain batching
    again = length_grouped_batches(lengths, 16, 8, np.random.default_rng(5))
    other = length_grouped_batches(lengths, 16, 8, np.random.default_rng(6))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    plain = length_grouped_batches(lengths, 16, 1, np.random.default_rng(5))
    assert padding_share(lengths[b] for b in batches) < padding_share(lengths[b] for b in plain) / 3


def test_the_batches_of_a_window_come_out_in_random_order():
    """Sorted within a window, but not served shortest first: a window's 8 batches in random order."""
    lengths = np.random.default_rng(0).integers(1, 50, size=16 * 8 * 4)
    batches = length_grouped_batches(lengths, 16, 8, np.random.default_rng(5))
    windows = [[int(lengths[b].max()) for b in batches[w:w + 8]] for w in range(0, len(batches), 8)]
    assert not any(w == sorted(w) for w in windows)


def test_sorted_batches_cover_every_index_in_length_order():
    lengths = np.array([5, 1, 3, 3, 9, 2])
    batches = sorted_batches(lengths, 4)
    assert [b.tolist() for b in batches] == [[1, 5, 2, 3], [0, 4]]


def test_bucketed_stream_covers_every_sample_once_over_two_ranks_and_two_workers(small_dir):
    seen = Counter()
    for rank in range(2):
        for batch in _stream(small_dir, window=4, rank=rank, world=2, workers=2):
            seen.update(batch["user"].tolist())
    assert sorted(seen) == list(range(1, 151)) and set(seen.values()) == {1}


def test_bucketed_stream_pads_less_and_resumes_from_a_saved_position(small_dir, tmp_path):
    import random
    from itertools import islice

    from rodpo_dist.train.checkpoint import TrainState, load_checkpoint, resolve_resume, save_checkpoint

    bucketed, plain = list(_stream(small_dir, window=8)), list(_stream(small_dir, window=1))
    assert padding_share(map(_lengths, bucketed)) < padding_share(map(_lengths, plain))
    # a run stops after 5 batches of epoch 1 (2 loader workers), having moved every global RNG, and checkpoints
    whole = list(_stream(small_dir, window=8, workers=2))
    stream = iter(_stream(small_dir, window=8, workers=2))
    taken = [next(stream) for _ in range(5)]
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    save_checkpoint(tmp_path, TrainState(step=5, epoch=1, batch_in_epoch=len(taken)), torch.nn.Linear(2, 2), {})
    # the resumed process starts from other RNG states, loads the checkpoint (its RNG states) and skips its position
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    state, _, _ = load_checkpoint(resolve_resume(tmp_path, "auto"), torch.nn.Linear(2, 2))
    resumed = list(islice(_stream(small_dir, window=8, workers=2, epoch=state.epoch), state.batch_in_epoch, None))
    # the epoch reads as one: the batches before the stop, then exactly the rest, in order
    assert len(taken) + len(resumed) == len(whole) and state.batch_in_epoch == 5
    for a, b in zip([*taken, *resumed], whole):
        assert torch.equal(a["seq"], b["seq"]) and torch.equal(a["user"], b["user"])
    assert [b["user"].tolist() for b in _stream(small_dir, window=8, epoch=2)] != [b["user"].tolist() for b in bucketed]


def test_epoch_loss_is_the_same_bucketed_or_not(small_dir):
    """Padding is masked: a fixed model's summed next-item loss over the epoch does not depend on
    which samples share a batch (fp32 summation order aside)."""
    from rodpo_dist.data.manifest import load_manifest

    torch.manual_seed(0)
    manifest = load_manifest(small_dir)
    model = SASRec(ItemEncoder(manifest.num_items, 16, {}), ModelConfig(hidden=16, layers=1, heads=1, max_len=11,
                                                                       dropout=0.0), MoEConfig()).eval()

    def epoch_loss(window):
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in _stream(small_dir, window=window):
                seq = batch["seq"]
                targets = seq[:, 1:] * (seq[:, :-1] != 0)
                hidden = model(seq[:, :-1]).hidden
                total += float(chunked_cross_entropy(hidden, targets, model.item_encoder, 64,
                                                     manifest.num_items, reduction="sum"))
                count += int((targets > 0).sum())
        return total, count

    (a, n), (b, m) = epoch_loss(8), epoch_loss(1)
    assert n == m and a == pytest.approx(b, rel=1e-5)
