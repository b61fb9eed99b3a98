"""Readers of raw interaction data into `Interactions` (user sequences with ids 1..U and 1..N).

- S3-Rec folders (`NAME.txt`: `user item item ...`, 1-based ids, chronological): ids are kept as in
  the file and must already be contiguous; no re-filtering.
- Generic interaction files (`.csv`/`.tsv` with a header, or `.jsonl`) with columns
  `user, item, timestamp`: per-user chronological order (stable on ties), repeated (user, item)
  pairs keep their first occurrence, k-core filtering to a fixpoint, then remapping of users and
  items to 1..U / 1..N in sorted order of their raw ids (item 0 is padding).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

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


def _read_rows(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Raw (users, items, timestamps) of a `.csv`/`.tsv`/`.jsonl` interaction file."""
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    suffix = path.suffix.lower()
    with open(path, newline="") as f:
        if suffix == ".jsonl":
            rows = ((n, line) for n, line in enumerate(f, 1) if line.strip())
            for lineno, line in rows:
                try:
                    rec = json.loads(line)
                    users.append(str(rec["user"]))
                    items.append(str(rec["item"]))
                    times.append(float(rec["timestamp"]))
                except (ValueError, KeyError, TypeError):
                    raise DataError(path, f"malformed line {line.strip()[:80]!r}: expected a JSON object with "
                                    "user, item and numeric timestamp", f"line {lineno}") from None
        elif suffix in (".csv", ".tsv"):
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")
            header = [h.strip() for h in next(reader, [])]
            if not {"user", "item", "timestamp"} <= set(header):
                raise DataError(path, f"header must name columns user, item, timestamp; got {header!r}", "line 1")
            cu, ci, ct = (header.index(c) for c in ("user", "item", "timestamp"))
            for row in reader:
                if not row:
                    continue
                try:
                    users.append(row[cu].strip())
                    items.append(row[ci].strip())
                    times.append(float(row[ct]))
                except (IndexError, ValueError):
                    raise DataError(path, f"malformed line {','.join(row)[:80]!r}: expected user, item, numeric "
                                    "timestamp", f"line {reader.line_num}") from None
        else:
            raise DataError(path, f"unsupported extension {suffix!r}; expected .csv, .tsv or .jsonl")
    return users, items, np.asarray(times, dtype=np.float64)


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


def read_interactions(path: str | Path, min_user_items: int, min_item_users: int) -> Interactions:
    """Read a generic interaction file (see module docstring); users keep >= max(min_user_items, 3) items."""
    path = Path(path)
    users, items, times = _read_rows(path)
    if not users:
        raise DataError(path, "no interactions")
    user_raw, u = np.unique(np.asarray(users), return_inverse=True)
    item_raw, i = np.unique(np.asarray(items), return_inverse=True)
    order = np.lexsort((times, u))  # stable: ties keep file order
    u, i = u[order], i[order]
    first = np.zeros(len(u), dtype=bool)
    first[np.unique(u.astype(np.int64) * len(item_raw) + i, return_index=True)[1]] = True
    u, i = u[first], i[first]
    keep = _k_core(u, i, max(min_user_items, MIN_SEQ_LEN), min_item_users)
    u, i = u[keep], i[keep]
    if not len(u):
        raise DataError(path, f"no interactions left after k-core filtering (min_user_items={min_user_items}, "
                        f"min_item_users={min_item_users})")
    kept_users, u_new = np.unique(u, return_inverse=True)
    kept_items, i_new = np.unique(i, return_inverse=True)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(u_new))]).astype(np.int64)
    return Interactions(offsets, (i_new + 1).astype(np.int32), len(kept_items),
                        user_ids=user_raw[kept_users].tolist(), item_ids=item_raw[kept_items].tolist())
