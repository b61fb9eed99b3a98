"""Observed rejections: items a user was shown and turned down (a low rating), kept beside the
positive sequence, never in it.

Each rejection has a user (1..U), an item (1..N), a time, and `position`: how many of the user's
positive items (its whole sequence, in time order) came at or before that time. Leave-one-out keeps
the last two positives as validation and test targets, so a rejection is a **training** rejection
when `position <= len(sequence) - 2` (strictly before the validation target's time; a tie with the
target's time counts as after it) and **held out** otherwise: training never sees a rejection made
at or after the validation target. For a context whose target is item j of the sequence (0-based),
the rejections made before that target are the training ones with `position <= j`.

A rejected item is never a positive of the same user: a (user, item) pair that is also among the
user's positives (all of them, the targets included) is dropped. Rejections of items or users that
did not survive k-core filtering are dropped too (their items cannot be scored).
Stored as `rejections.npz` in the prepared dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rodpo_dist.data.sources import Interactions

REJECTIONS_FILE = "rejections.npz"


@dataclass
class Rejections:
    users: np.ndarray
    """[R] int32 user ids 1..U, sorted by (user, position, time)."""
    items: np.ndarray
    """[R] int32 item ids 1..N."""
    times: np.ndarray
    """[R] float64."""
    position: np.ndarray
    """[R] int32: the user's positives at or before the rejection's time."""
    heldout: np.ndarray
    """[R] bool: at or after the user's validation target (never used in training)."""

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def build(cls, data: Interactions, users: np.ndarray, items: np.ndarray, times: np.ndarray,
              position: np.ndarray | None = None) -> Rejections:
        """From (user, item, time) triples already in the dataset's ids (0 = dropped): positions from
        `data.times` unless given, positives of the same user removed, sorted, split."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        times = np.asarray(times, np.float64)
        keep = (users > 0) & (items > 0)
        users, items, times = users[keep], items[keep], times[keep]
        if position is None:
            if data.times is None:
                raise ValueError("rejections need the positives' times (Interactions.times)")
            position = _positions(data, users, times)
        else:
            position = np.asarray(position, np.int64)[keep]
        # never a positive of the same user
        pos_keys = np.repeat(np.arange(1, data.num_users + 1, dtype=np.int64), data.lengths) * (data.num_items + 1) \
            + data.items.astype(np.int64)
        clash = np.isin(users * (data.num_items + 1) + items, pos_keys)
        users, items, times, position = users[~clash], items[~clash], times[~clash], position[~clash]
        # one rejection per (user, item): the first
        order = np.lexsort((times, users * (data.num_items + 1) + items))
        first = np.ones(len(order), bool)
        key = (users * (data.num_items + 1) + items)[order]
        first[1:] = key[1:] != key[:-1]
        sel = order[first]
        users, items, times, position = users[sel], items[sel], times[sel], position[sel]
        order = np.lexsort((times, position, users))
        users, items, times, position = users[order], items[order], times[order], position[order]
        heldout = position > data.lengths[users - 1] - 2
        return cls(users.astype(np.int32), items.astype(np.int32), times, position.astype(np.int32), heldout)

    def save(self, directory: str | Path) -> None:
        np.savez(Path(directory) / REJECTIONS_FILE, users=self.users, items=self.items, times=self.times,
                 position=self.position, heldout=self.heldout)

    @classmethod
    def load(cls, directory: str | Path) -> Rejections:
        with np.load(Path(directory) / REJECTIONS_FILE, allow_pickle=False) as z:
            return cls(z["users"], z["items"], z["times"], z["position"], z["heldout"])

    def stats(self) -> dict[str, int]:
        return {"train": int((~self.heldout).sum()), "heldout": int(self.heldout.sum()),
                "users_with_train": int(len(np.unique(self.users[~self.heldout]))),
                "users_with_heldout": int(len(np.unique(self.users[self.heldout])))}

    def by_user(self, num_users: int, heldout: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR over users 1..U of the training (or held-out) rejections: (offsets [U+1], items, positions);
        user u's are rows offsets[u-1]:offsets[u], in order of position."""
        sel = self.heldout == heldout
        users = self.users[sel].astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(users - 1, minlength=num_users))]).astype(np.int64)
        return offsets, self.items[sel].astype(np.int64), self.position[sel].astype(np.int64)

    def heldout_lists(self, users: np.ndarray, num_users: int) -> list[np.ndarray]:
        """The held-out rejected items of each of `users` (empty arrays for users without any)."""
        offsets, items, _ = self.by_user(num_users, heldout=True)
        return [items[offsets[u - 1]:offsets[u]] for u in np.asarray(users, np.int64)]


def _positions(data: Interactions, users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each (user, time): how many of the user's positives came at or before that time.

    One stable sort of positives and rejections together by (user, time), a positive before a
    rejection of the same time; a rejection's position is the positives sorted before it, less the
    positives of earlier users."""
    pos_users = np.repeat(np.arange(1, data.num_users + 1, dtype=np.int64), data.lengths)
    all_users = np.concatenate([pos_users, users])
    all_times = np.concatenate([np.asarray(data.times, np.float64), times])
    is_rejection = np.concatenate([np.zeros(len(pos_users), np.int8), np.ones(len(users), np.int8)])
    order = np.lexsort((is_rejection, all_times, all_users))
    positives_before = np.cumsum(is_rejection[order] == 0)
    position = np.empty(len(users), np.int64)
    rejected = order >= len(pos_users)
    position[order[rejected] - len(pos_users)] = positives_before[rejected]
    return position - np.asarray(data.offsets, np.int64)[users - 1]
