"""Training contexts: the cuts of each sequence, and all-position states, pools and losses equal to
the per-prefix contexts built one by one."""

from __future__ import annotations

import numpy as np
import torch

from rodpo_dist.config import ModelConfig, MoEConfig
from rodpo_dist.data import Contexts, SplitData, TrainingContexts
from rodpo_dist.model import ItemEncoder, SASRec
from rodpo_kernels import dpo_loss

SEQUENCES = [np.array([4, 7, 2, 9]), np.array([3, 5]), np.array([8, 1, 6, 2, 4, 7, 3])]
SPLIT = SplitData(np.array([1, 2, 3]), SEQUENCES, np.array([-1, -1, -1]))


def test_last_position_cuts_the_prefix_and_the_last_item():
    ctx = TrainingContexts.from_split(SPLIT, "last", max_len=5)
    assert len(ctx) == 3 and ctx.offsets.tolist() == [0, 1, 2, 3]
    b = ctx.batch([0, 2])
    assert b.seq.tolist() == [[0, 0, 4, 7, 2], [1, 6, 2, 4, 7]]  # the windows: all but the last item, last 5
    assert b.targets.tolist() == [9, 3] and b.cols.tolist() == [4, 4] and b.rows.tolist() == [0, 1]
    assert b.exclude[0].tolist()[:4] == [4, 7, 2, 9] and set(b.exclude[1].tolist()) == {8, 1, 6, 2, 4, 7, 3}


def test_all_positions_give_one_context_per_predicted_item_within_max_len():
    ctx = TrainingContexts.from_split(SPLIT, "all", max_len=4)
    assert ctx.contexts_per_sequence().tolist() == [3, 1, 4]
    b = ctx.batch([2, 1])
    assert b.seq.tolist() == [[6, 2, 4, 7], [0, 0, 0, 3]]
    # sequence 2 predicts its last 4 items (2, 4, 7, 3) from columns 0..3; sequence 1 predicts 5
    assert list(zip(b.rows.tolist(), b.cols.tolist(), b.targets.tolist())) == [
        (0, 3, 3), (0, 2, 7), (0, 1, 4), (0, 0, 2), (1, 3, 5)]
    assert b.context_ids.tolist() == [4, 5, 6, 7, 3] and b.users.tolist() == [3, 3, 3, 3, 2]
    assert all(set(row[row > 0].tolist()) == set(SEQUENCES[2].tolist()) for row in b.exclude[:4])


def test_validation_contexts_exclude_the_whole_history():
    ctx = Contexts(np.array([1]), [np.array([5, 6, 7, 8])], np.array([9]))
    seq, exclude, targets = ctx.batch([0], max_len=2, exclude_target=True)
    assert seq.tolist() == [[7, 8]] and exclude.tolist() == [[5, 6, 7, 8, 9]] and targets.tolist() == [9]


def _model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(ItemEncoder(9, 8, {}), ModelConfig(hidden=8, layers=2, heads=2, max_len=6, dropout=0.0),
                  MoEConfig()).eval()


def test_all_position_states_and_losses_equal_the_prefix_contexts_one_by_one():
    model = _model()
    ctx = TrainingContexts.from_split(SPLIT, "all", max_len=6)
    b = ctx.batch([0, 1, 2])
    states = model(b.seq).hidden[b.rows, b.cols]
    one_by_one = []
    for row, col in zip(b.rows.tolist(), b.cols.tolist()):
        prefix = b.seq[row:row + 1].clone()
        prefix[:, col + 1:] = 0  # the prefix alone, at the positions it has in the window
        one_by_one.append(model(prefix).hidden[0, col])
    one_by_one = torch.stack(one_by_one)
    torch.testing.assert_close(states, one_by_one, rtol=0, atol=1e-6)
    table = model.item_encoder.item_table(16)
    neg = torch.tensor([[(t % 9) + 1] for t in b.targets.tolist()])
    loss = dpo_loss(states, states * 0.5, table, b.targets, neg, 1.0).loss
    each = torch.stack([dpo_loss(one_by_one[i:i + 1], one_by_one[i:i + 1] * 0.5, table, b.targets[i:i + 1],
                                 neg[i:i + 1], 1.0).loss for i in range(len(neg))])
    torch.testing.assert_close(loss, each.mean(), rtol=0, atol=1e-6)
    last = TrainingContexts.from_split(SPLIT, "last", max_len=6).batch([0, 1, 2])
    torch.testing.assert_close(model(last.seq).hidden[:, -1], states[[0, 3, 4]], rtol=0, atol=1e-6)
