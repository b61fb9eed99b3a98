"""`Interactions` (user sequences with ids 1..U and 1..N) and the readers of S3-Rec folders.

S3-Rec folders (`NAME.txt`: `user item item ...`, 1-based ids, chronological): ids are kept as in
the file and must already be contiguous; no re-filtering. Interaction files of any other layout are
read by `rodpo_dist.data.events`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rodpo_dist.data.errors import DataError

MIN_SEQ_LEN = 3
"""Leave-one-out needs at least one training item, a validation and a test target."""


@dataclass
class Interactions:
    """User sequences in CSR form: user `u` (1-based) is `items[offsets[u-1]:offsets[u]]`."""

    offsets: np.ndarray
    items: np.ndarray
    num_items: int
    user_ids: list[str] | None = None
    """Raw id of each user (index u-1), when ids were remapped."""
    item_ids: list[str] | None = None
    """Raw id of each item (index i-1), when known."""
    times: np.ndarray | None = None
    """Time of each item of `items` (same order), when the source has times (interaction files)."""
    rejections: Any = None
    """The users' observed rejections (`rejections.Rejections`), when the source records them."""

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user - 1]:self.offsets[user]]


def _parse_ints(path: Path, lineno: int, line: str) -> list[int]:
    try:
        return [int(tok) for tok in line.split()]
    except ValueError:
        raise DataError(path, f"malformed line {line.strip()[:80]!r}: expected integer ids", f"line {lineno}") from None


def read_s3rec_sequences(path: Path) -> Interactions:
    """Read an S3-Rec `NAME.txt`; user ids must be exactly 1..U and item ids exactly 1..N."""
    seqs: dict[int, list[int]] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            user, *items = _parse_ints(path, lineno, line)
            where = f"line {lineno}"
            if not items:
                raise DataError(path, f"user {user} has an empty history", where)
            if len(items) < MIN_SEQ_LEN:
                raise DataError(path, f"user {user} has {len(items)} items; leave-one-out needs >= {MIN_SEQ_LEN}", where)
            if user < 1 or user in seqs:
                raise DataError(path, f"user id {user} is {'not >= 1' if user < 1 else 'repeated'}", where)
            if min(items) < 1:
                raise DataError(path, f"item id {min(items)} out of range (ids start at 1)", where)
            seqs[user] = items
    if not seqs:
        raise DataError(path, "no users")
    if max(seqs) != len(seqs):
        missing = next(u for u in range(1, len(seqs) + 1) if u not in seqs)
        raise DataError(path, f"user ids are not contiguous 1..{max(seqs)}: user {missing} is missing")
    lengths = np.array([len(seqs[u]) for u in range(1, len(seqs) + 1)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.fromiter((i for u in range(1, len(seqs) + 1) for i in seqs[u]), dtype=np.int32, count=int(offsets[-1]))
    num_items = int(items.max())
    seen = np.bincount(items, minlength=num_items + 1)[1:]
    if not seen.all():
        raise DataError(path, f"item ids are not contiguous 1..{num_items}: item {int(np.argmin(seen)) + 1} never occurs")
    return Interactions(offsets, items, num_items)


def read_s3rec_attributes(path: Path, num_items: int) -> list[list[int]]:
    """`NAME_item2attributes.json` -> attribute list per item id (index 0 = padding, empty)."""
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg}", f"line {err.lineno}") from None
    bags: list[list[int]] = [[] for _ in range(num_items + 1)]
    for key, attrs in raw.items():
        if not key.isdigit() or not 1 <= int(key) <= num_items:
            raise DataError(path, f"item id {key!r} out of range 1..{num_items}", f"key {key!r}")
        if not isinstance(attrs, list) or not all(isinstance(a, int) and a >= 0 for a in attrs):
            raise DataError(path, f"expected a list of non-negative integer attribute ids, got {attrs!r:.80}", f"key {key!r}")
        bags[int(key)] = attrs
    return bags


def read_s3rec_items(path: Path, num_items: int) -> tuple[list[str], list[str]]:
    """`NAME_items.tsv` (header `item_id asin text`) -> (asin, text) per item id 1..N."""
    asins: list[str | None] = [None] * num_items
    texts: list[str] = [""] * num_items
    with open(path, newline="") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:3] != ["item_id", "asin", "text"]:
            raise DataError(path, f"expected header 'item_id<TAB>asin<TAB>text', got {header!r}", "line 1")
        for lineno, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or not fields[0].isdigit():
                raise DataError(path, f"malformed line {line.strip()[:80]!r}: expected item_id<TAB>asin<TAB>text",
                                f"line {lineno}")
            item = int(fields[0])
            if not 1 <= item <= num_items:
                raise DataError(path, f"item id {item} out of range 1..{num_items}", f"line {lineno}")
            asins[item - 1], texts[item - 1] = fields[1], fields[2]
    if None in asins:
        raise DataError(path, f"item {asins.index(None) + 1} has no row")
    return asins, texts  # type: ignore[return-value]


def s3rec_paths(folder: str | Path, name: str) -> dict[str, Path]:
    folder = Path(folder)
    return {"sequences": folder / f"{name}.txt", "attributes": folder / f"{name}_item2attributes.json",
            "items": folder / f"{name}_items.tsv"}
