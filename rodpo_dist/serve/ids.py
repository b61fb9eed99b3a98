"""Raw item ids (the source's) <-> internal ids 1..N of a prepared dataset.

The raw ids are the ones in the prepared folder's `id_maps.json` (S3-Rec: the ASINs of
`NAME_items.tsv`; generic interaction files: the file's item column). Sources without one (the
synthetic catalog, S3-Rec without an items file) use the internal ids themselves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from rodpo_dist.data.prepare import ID_MAPS_FILE

RawId = str | int


class ItemIds:
    """Maps raw item ids to internal ids 1..N and back.

    `raw[i - 1]` is the raw id of item i, or None when raw ids are the internal ids. A raw id is
    matched by its string form, so `123` finds the item whose raw id is `"123"`.
    """

    def __init__(self, num_items: int, raw: Sequence[RawId] | None = None) -> None:
        if raw is not None and len(raw) != num_items:
            raise ValueError(f"id map has {len(raw)} item ids for a catalog of {num_items} items")
        self.num_items = num_items
        self.raw = list(raw) if raw is not None else None
        self._index = {str(r): i for i, r in enumerate(self.raw, 1)} if self.raw is not None else None

    @classmethod
    def load(cls, prepared_dir: str | Path, num_items: int) -> ItemIds:
        """The item ids of a prepared dataset folder (identity when it has no `id_maps.json`)."""
        path = Path(prepared_dir) / ID_MAPS_FILE
        raw = json.loads(path.read_text()).get("items") if path.is_file() else None
        return cls(num_items, raw)

    def internal(self, raw_id: Any) -> int | None:
        """The internal id of `raw_id`, None when it is no item of the catalog."""
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, Integral)):
            return None
        if self._index is not None:
            return self._index.get(str(raw_id))
        text = str(raw_id)
        return int(text) if text.isdecimal() and 1 <= int(text) <= self.num_items else None

    def to_raw(self, ids: np.ndarray) -> list[RawId]:
        """Raw ids of internal ids 1..N."""
        return [int(i) for i in ids] if self.raw is None else [self.raw[i - 1] for i in ids]

    def all_raw(self) -> list[RawId]:
        """The raw id of every item 1..N, in order."""
        return self.to_raw(np.arange(1, self.num_items + 1))
