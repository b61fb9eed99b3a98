"""Leave-one-out split: last item = test target, second-to-last = validation target, rest = training."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from rodpo_dist.data.sources import Interactions

SPLITS = ("train", "valid", "test")
NO_TARGET = -1


def leave_one_out(seq: np.ndarray, split: str) -> tuple[np.ndarray, int]:
    """(sequence, target) of one user's full sequence for `split`; train has target -1."""
    if split == "train":
        return seq[:-2], NO_TARGET
    if split == "valid":
        return seq[:-2], int(seq[-2])
    if split == "test":
        return seq[:-1], int(seq[-1])
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def split_samples(data: Interactions, split: str) -> Iterator[tuple[int, np.ndarray, int]]:
    """(user, sequence, target) for every user 1..U in order."""
    for user in range(1, data.num_users + 1):
        seq, target = leave_one_out(data.sequence(user), split)
        yield user, seq, target
