"""Scoring contexts: which (history, target) pairs a model is asked to rank, and how they batch.

`Contexts` are evaluation-style contexts: a history scored as a fresh sequence (its last item at
the last position) and one held-out target; validation and test are built this way.

`TrainingContexts` are the alignment stage's contexts, cut from each user's training sequence as
pretraining sees it: the input window is the sequence without its last item (its last `max_len`
items), and position t of the window predicts the item after it. `positions="last"` keeps only the
last position (the whole training prefix predicts the last training item, as in a validation
context); `positions="all"` keeps every position, so one forward pass over a window yields every
context's state. A position's state is the one SASRec computes there in training (causal attention,
positions counted from the window's end), i.e. the state of that prefix laid out at the same
positions of the window. Every context of a user excludes the user's whole training sequence
(its known positives) from negatives and candidate pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from rodpo_dist.data.loader import SplitData

Positions = Literal["last", "all"]


def left_pad(rows: Sequence[np.ndarray], width: int) -> torch.Tensor:
    """[len(rows), width] long, each row's last `width` items right-aligned, zeros before."""
    out = torch.zeros(len(rows), max(1, width), dtype=torch.long)
    for i, row in enumerate(rows):
        tail = row[len(row) - min(len(row), out.shape[1]):]
        if len(tail):
            out[i, out.shape[1] - len(tail):] = torch.as_tensor(tail, dtype=torch.long)
    return out


def padded_ids(rows: Sequence[np.ndarray], extra: torch.Tensor | None = None) -> torch.Tensor:
    """[len(rows), W] long exclusion lists padded with -1; `extra` [len(rows)] is appended to each."""
    width = max((len(r) for r in rows), default=0) + int(extra is not None)
    out = torch.full((len(rows), max(1, width)), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    if extra is not None:
        out[:, width - 1] = extra
    return out


@dataclass
class Contexts:
    """Histories scored as fresh sequences, each with one target (validation, test, requests)."""

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray

    @classmethod
    def from_split(cls, split: SplitData) -> Contexts:
        """Validation/test contexts: each user's history and held-out target."""
        return cls(split.users, split.sequences, split.targets)

    def __len__(self) -> int:
        return len(self.users)

    def sample(self, n: int, seed: int = 0) -> Contexts:
        """A fixed random subset of `n` contexts (all when `n` is 0 or at least their number), in order."""
        if not n or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Contexts(self.users[keep], [self.histories[i] for i in keep], self.targets[keep])

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(h) for h in self.histories), dtype=np.int64, count=len(self.histories))

    def batch(self, index: Sequence[int], max_len: int,
              exclude_target: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(left-padded model input [b, W <= max_len], exclusions [b, H] padded with -1, targets [b]).

        Exclusions are the whole history (not only the last `max_len` items), plus the target
        when `exclude_target`.
        """
        hist = [self.histories[i] for i in index]
        targets = torch.as_tensor(self.targets[np.asarray(index, dtype=np.int64)], dtype=torch.long)
        seq = left_pad(hist, min(max_len, max(len(h) for h in hist)))
        return seq, padded_ids(hist, targets if exclude_target else None), targets


@dataclass
class SequenceBatch:
    """A batch of training windows and the contexts they hold (see `TrainingContexts.batch`)."""

    seq: torch.Tensor
    """[b, W] left-padded input windows."""
    rows: torch.Tensor
    """[C] row in `seq` of each context."""
    cols: torch.Tensor
    """[C] column in `seq` of each context (its state is `hidden[rows, cols]`)."""
    context_ids: torch.Tensor
    """[C] global context index (the pool row)."""
    targets: torch.Tensor
    """[C] positive item of each context."""
    exclude: torch.Tensor
    """[C, H] the context's user's whole training sequence, -1 padded."""
    users: torch.Tensor
    """[C] user id of each context."""


@dataclass
class TrainingContexts:
    """Training contexts grouped by sequence: sequence i owns contexts offsets[i]:offsets[i+1]."""

    users: np.ndarray
    """[S] user of each training sequence."""
    sequences: list[np.ndarray]
    """The whole training sequence of each user (the known positives)."""
    offsets: np.ndarray
    """[S+1] first context of each sequence."""
    steps_back: np.ndarray
    """[C] how many items before the end of its sequence each context's target is (0 = the last)."""
    max_len: int

    @classmethod
    def from_split(cls, split: SplitData, positions: Positions, max_len: int) -> TrainingContexts:
        """Contexts of every training sequence with at least two items."""
        keep = [i for i, s in enumerate(split.sequences) if len(s) >= 2]
        sequences = [split.sequences[i] for i in keep]
        counts = [1 if positions == "last" else min(len(s) - 1, max_len) for s in sequences]
        steps_back = np.concatenate([np.arange(c, dtype=np.int64) for c in counts]) if counts else np.zeros(0, np.int64)
        return cls(split.users[keep], sequences, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   steps_back, max_len)

    def __len__(self) -> int:
        """The number of contexts (pool rows)."""
        return int(self.offsets[-1])

    @property
    def num_sequences(self) -> int:
        return len(self.sequences)

    def lengths(self) -> np.ndarray:
        """[S] input window length of each sequence (what a batch pads to)."""
        return np.fromiter((min(len(s) - 1, self.max_len) for s in self.sequences), dtype=np.int64,
                           count=len(self.sequences))

    def contexts_per_sequence(self) -> np.ndarray:
        return np.diff(self.offsets)

    def context_users(self) -> np.ndarray:
        """[C] user of each context."""
        return np.repeat(self.users, self.contexts_per_sequence())

    def batch(self, index: Sequence[int]) -> SequenceBatch:
        """The windows of sequences `index` and all their contexts, in sequence order."""
        index = np.asarray(index, dtype=np.int64)
        windows = [self.sequences[i][:-1] for i in index]
        seq = left_pad(windows, min(self.max_len, max(len(w) for w in windows)))
        width = seq.shape[1]
        counts = self.contexts_per_sequence()[index]
        rows = np.repeat(np.arange(len(index)), counts)
        ids = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in index])
        back = self.steps_back[ids]
        cols = width - 1 - back
        targets = np.array([self.sequences[i][len(self.sequences[i]) - 1 - b]
                            for i, b in zip(index[rows], back)], dtype=np.int64)
        exclude = padded_ids([self.sequences[i] for i in index])[torch.as_tensor(rows)]
        return SequenceBatch(seq, torch.as_tensor(rows), torch.as_tensor(cols), torch.as_tensor(ids),
                             torch.as_tensor(targets), exclude, torch.as_tensor(self.users[index][rows]))
