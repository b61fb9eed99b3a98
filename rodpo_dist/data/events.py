"""Interaction files as people have them -> user sequences, in separate steps.

- `read_events`: a `.csv` / `.tsv` / `.jsonl` / `.parquet` / RecBole `.inter` file, read in chunks,
  into `Events`: user and item ids coded by first appearance, timestamps (numbers or ISO-8601), and
  the raw ratings when a setting needs them (`data.min_rating`, `data.max_dislike_rating`).
- `split_by_rating`: the interactions rated at or above `min_rating`, and the rest (kept apart, not
  thrown away, so that a later step can use them as observed dislikes).
- `observed_rejections`: the interactions rated at or below `data.max_dislike_rating` (or whose event
  type is one of `data.dislike_events`), as the users' observed rejections in the dataset's ids
  (`rejections.Rejections`).
- `to_interactions`: per-user chronological order (stable on ties: file order), repeated (user, item)
  pairs keep their first occurrence, k-core filtering to a fixpoint, then users and items renumbered
  1..U / 1..N in sorted order of their raw ids (item 0 is padding).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.rejections import Rejections
from rodpo_dist.data.sources import MIN_SEQ_LEN, Interactions
from rodpo_dist.data.tables import Table, ids, numbers, timestamps
from rodpo_dist.data.vocab import Vocabulary


@dataclass(frozen=True)
class EventColumns:
    """The columns of an interaction file; `rating` is read (and required) only when `rating_required`."""

    user: str
    item: str
    timestamp: str
    rating: str
    rating_required: bool = False
    event: str = ""
    dislike_events: tuple[str, ...] = ()
    """Values of the `event` column that mark an observed rejection (the column is required when given)."""

    def roles(self) -> dict[str, str]:
        """The columns read, each with the setting that names it."""
        roles = {self.user: "data.columns.user", self.item: "data.columns.item",
                 self.timestamp: "data.columns.timestamp"}
        if self.rating_required:
            roles[self.rating] = "data.columns.rating, needed by data.min_rating / data.max_dislike_rating"
        if self.dislike_events:
            roles[self.event] = "data.columns.event, needed by data.dislike_events"
        return roles


@dataclass
class Events:
    """Interactions in file order (or a selection of them); codes index `users.values` / `items.values`."""

    path: Path
    columns: EventColumns
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    rating: np.ndarray | None
    users: Vocabulary
    items: Vocabulary
    disliked: np.ndarray | None = None
    """[n] bool: the event type is one of `columns.dislike_events` (None: no event column read)."""

    def __len__(self) -> int:
        return len(self.user)

    def select(self, mask: np.ndarray) -> Events:
        """The interactions where `mask` holds (vocabularies shared)."""
        return replace(self, user=self.user[mask], item=self.item[mask], time=self.time[mask],
                       rating=None if self.rating is None else self.rating[mask],
                       disliked=None if self.disliked is None else self.disliked[mask])


def open_events(path: str | Path, columns: EventColumns, chunk_rows: int) -> Table:
    """The interaction file, its header holding every column read (all the missing ones named at once)."""
    table = Table(path, chunk_rows)
    table.require(columns.roles())
    return table


def read_events(path: str | Path, columns: EventColumns, chunk_rows: int) -> Events:
    """Read an interaction file chunk by chunk (memory: the chunk plus 20 bytes per interaction)."""
    table = open_events(path, columns, chunk_rows)
    has_rating = columns.rating_required  # unused otherwise: not parsed, so blank cells there do no harm
    has_event = bool(columns.dislike_events)
    users, items = Vocabulary(), Vocabulary()
    parts: dict[str, list[np.ndarray]] = {"user": [], "item": [], "time": [], "rating": [], "disliked": []}
    kinds = pa.array(list(columns.dislike_events), pa.string())
    for chunk in table.chunks(list(columns.roles())):
        parts["user"].append(users.encode(ids(chunk, columns.user)).astype(np.int32))
        parts["item"].append(items.encode(ids(chunk, columns.item)).astype(np.int32))
        parts["time"].append(timestamps(chunk, columns.timestamp))
        if has_rating:
            parts["rating"].append(numbers(chunk, columns.rating, "rating").astype(np.float32))
        if has_event:
            parts["disliked"].append(pc.is_in(ids(chunk, columns.event), value_set=kinds).to_numpy(zero_copy_only=False))
    if not parts["user"]:
        raise DataError(table.path, "no interactions")
    joined = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    return Events(table.path, columns, joined["user"], joined["item"], joined["time"], joined["rating"], users, items,
                  joined["disliked"])


def split_by_rating(events: Events, min_rating: float) -> tuple[Events, Events]:
    """(rated >= min_rating, rated below it)."""
    if events.rating is None:
        raise DataError(events.path, f"data.min_rating={min_rating} needs a rating column",
                        f"header, column {events.columns.rating!r}")
    liked = events.rating >= min_rating
    return events.select(liked), events.select(~liked)


def _k_core(u: np.ndarray, i: np.ndarray, min_user: int, min_item: int) -> np.ndarray:
    """Mask of the interactions kept by iterated k-core filtering (to a fixpoint)."""
    keep = np.ones(len(u), dtype=bool)
    while True:
        user_ok = np.bincount(u[keep], minlength=u.max() + 1) >= min_user
        item_ok = np.bincount(i[keep], minlength=i.max() + 1) >= min_item
        new = keep & user_ok[u] & item_ok[i]
        if new.sum() == keep.sum():
            return keep
        keep = new


def to_interactions(events: Events, min_user_items: int, min_item_users: int) -> Interactions:
    """User sequences (see module docstring); users keep >= max(min_user_items, 3) items."""
    if not len(events):
        raise DataError(events.path, "no interactions left to build sequences from")
    user_rank, item_rank = events.users.sorted_ranks(), events.items.sorted_ranks()
    u, i = user_rank[events.user], item_rank[events.item]
    order = np.lexsort((events.time, u))  # stable: ties keep file order
    u, i, t = u[order], i[order], events.time[order]
    first = np.zeros(len(u), dtype=bool)
    first[np.unique(u * len(item_rank) + i, return_index=True)[1]] = True
    u, i, t = u[first], i[first], t[first]
    keep = _k_core(u, i, max(min_user_items, MIN_SEQ_LEN), min_item_users)
    u, i, t = u[keep], i[keep], t[keep]
    if not len(u):
        raise DataError(events.path, f"no interactions left after k-core filtering (min_user_items={min_user_items}, "
                        f"min_item_users={min_item_users})")
    kept_users, u_new = np.unique(u, return_inverse=True)
    kept_items, i_new = np.unique(i, return_inverse=True)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(u_new))]).astype(np.int64)
    user_raw = events.users.values.take(np.argsort(user_rank)[kept_users])
    item_raw = events.items.values.take(np.argsort(item_rank)[kept_items])
    return Interactions(offsets, (i_new + 1).astype(np.int32), len(kept_items),
                        user_ids=user_raw.to_pylist(), item_ids=item_raw.to_pylist(), times=t.astype(np.float64))


def observed_rejections(disliked: Events, data: Interactions) -> Rejections:
    """The interactions of `disliked` (same vocabularies as the events `data` was built from) as the
    users' observed rejections in `data`'s ids; users and items that k-core removed are dropped
    (see `rejections.Rejections.build`)."""
    users = pa.array(data.user_ids or [], pa.string())
    items = pa.array(data.item_ids or [], pa.string())
    user_new = pc.fill_null(pc.index_in(disliked.users.values, value_set=users), -1).to_numpy().astype(np.int64) + 1
    item_new = pc.fill_null(pc.index_in(disliked.items.values, value_set=items), -1).to_numpy().astype(np.int64) + 1
    return Rejections.build(data, user_new[disliked.user] if len(disliked) else np.zeros(0, np.int64),
                            item_new[disliked.item] if len(disliked) else np.zeros(0, np.int64), disliked.time)
