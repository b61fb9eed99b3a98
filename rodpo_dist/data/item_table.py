"""An item table keyed by raw item id -> the modalities of the items that survived filtering.

Read in two passes, each in chunks: `read_table_ids` reads the id column alone (every id once, or an
error naming both rows), so interactions with items absent from the table are found before k-core
filtering; `item_modalities` then reads the metadata of the surviving items only:
- `text`: the text columns joined as `name: value; name: value` (empty values left out) and embedded
  with the sentence encoder; an item with no text is missing;
- `attr`: one attribute per (column, value) pair, `column=value`, numbered in sorted order; a list
  value or a string split at the column's separator gives several; an item with none is missing;
- one dense modality per vector: a list (or number-string) column, or a `.npy` keyed by raw id
  (`features.dense_by_raw_id`); an item without one is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.features import Modality, bags, dense, dense_by_raw_id, missing_flags, text_modality
from rodpo_dist.data.tables import Chunk, Table, ids, texts, tokens, vectors
from rodpo_dist.data.vocab import Vocabulary


@dataclass(frozen=True)
class ItemTableSpec:
    """Where an item table is and which of its columns feed which modality."""

    path: Path
    id: str
    text: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    """Attribute column -> the separator its string values are split at ('' = one value)."""
    vectors: dict[str, str] = field(default_factory=dict)
    """Modality name -> a column of the table, or a `.npy` path keyed by raw id."""

    def roles(self) -> dict[str, str]:
        """The table columns pass 2 reads (`.npy` vectors are files, not columns), each with the
        setting that names it."""
        roles = {self.id: "id"}
        for column in self.text:
            roles.setdefault(column, "text")
        for column in self.attributes:
            roles.setdefault(column, "attributes")
        for name, source in self.vectors.items():
            if not source.endswith(".npy"):
                roles.setdefault(source, f"vectors.{name}")
        return roles

    def columns(self) -> list[str]:
        """The table columns pass 2 reads."""
        return list(self.roles())


def open_item_table(spec: ItemTableSpec, chunk_rows: int) -> Table:
    """The item table, its header holding every column read (all the missing ones named at once)."""
    table = Table(spec.path, chunk_rows)
    table.require({column: f"data.items.{role}" for column, role in spec.roles().items()})
    return table


def read_table_ids(spec: ItemTableSpec, chunk_rows: int) -> Vocabulary:
    """Every raw id of the table (pass 1); a repeated id is an error naming its two rows."""
    table = open_item_table(spec, chunk_rows)
    vocab = Vocabulary()
    first_row = np.zeros(0, dtype=np.int64)
    for chunk in table.chunks([spec.id]):
        codes = vocab.encode(ids(chunk, spec.id))
        rows = chunk.first_row + np.arange(len(codes))
        seen_before = codes < len(first_row)
        _, first_in_chunk = np.unique(codes, return_index=True)
        repeated = np.ones(len(codes), dtype=bool)
        repeated[first_in_chunk] = False
        bad = seen_before | repeated
        if bad.any():
            index = int(np.argmax(bad))
            earlier = first_row[codes[index]] if seen_before[index] else rows[codes == codes[index]][0]
            raise chunk.error(spec.id, index, f"duplicate item id {vocab.values[codes[index]].as_py()!r} "
                              f"(first at row {earlier})")
        first_row = np.concatenate([first_row, np.zeros(len(vocab) - len(first_row), dtype=np.int64)])
        first_row[codes] = rows
    return vocab


@dataclass
class _Metadata:
    """What pass 2 collects for the surviving items (index = item id - 1)."""

    texts: list[str | None]
    tokens: list[set[str]]
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Column -> (item ids, values) of the items that have a vector."""


def _collect(spec: ItemTableSpec, wanted: Vocabulary, chunk_rows: int) -> _Metadata:
    """Pass 2: the metadata of the items in `wanted` (codes = item id - 1)."""
    n = len(wanted)
    meta = _Metadata([None] * n, [set() for _ in range(n)])
    columns = [c for c in spec.vectors.values() if not c.endswith(".npy")]
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in columns}
    dims: dict[str, int | None] = dict.fromkeys(columns)
    for chunk in Table(spec.path, chunk_rows).chunks(spec.columns()):
        item = wanted.lookup(ids(chunk, spec.id))
        rows = np.flatnonzero(item >= 0)
        if spec.text:
            joined = _join_texts(chunk, spec.text)
            for r in rows:
                meta.texts[item[r]] = joined[r]
        for column, separator in spec.attributes.items():
            values = tokens(chunk, column, separator)
            for r in rows:
                meta.tokens[item[r]].update(f"{column}={v}" for v in values[r])
        for column in columns:
            positions, matrix = vectors(chunk, column, dims[column])
            dims[column] = matrix.shape[1] if len(positions) else dims[column]
            keep = item[positions] >= 0
            parts[column].append((item[positions][keep] + 1, matrix[keep]))
    for column, pieces in parts.items():
        meta.vectors[column] = (np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int64),
                                np.concatenate([p[1] for p in pieces]) if pieces else np.zeros((0, 0), np.float32))
    return meta


def _join_texts(chunk: Chunk, columns: list[str]) -> list[str | None]:
    values = [texts(chunk, c) for c in columns]
    joined = ["; ".join(f"{c}: {v}" for c, v in zip(columns, row) if v is not None) for row in zip(*values)]
    return [j or None for j in joined]


def _attribute_bags(item_tokens: list[set[str]]) -> Modality:
    vocab = {t: a for a, t in enumerate(sorted(set().union(*item_tokens)))}
    module = bags([[]] + [sorted(vocab[t] for t in toks) for toks in item_tokens])
    return replace(module, missing=missing_flags(np.array([False] + [bool(t) for t in item_tokens])))


def _vector_modality(spec: ItemTableSpec, source: str, meta: _Metadata, raw_ids: list[str]) -> Modality:
    if source.endswith(".npy"):
        return dense_by_raw_id(source, raw_ids)
    items, values = meta.vectors[source]
    if not len(items):
        raise DataError(spec.path, "no surviving item has a vector", f"column {source!r}")
    out = np.zeros((len(raw_ids) + 1, values.shape[1]), dtype=np.float32)
    out[items] = values
    has = np.zeros(len(out), dtype=bool)
    has[items] = True
    return dense(out, missing_flags(has))


def item_modalities(spec: ItemTableSpec, raw_ids: list[str], encoder: str, chunk_rows: int,
                    progress: bool) -> dict[str, Callable[[], Modality]]:
    """Modality factories for items 1..N with raw ids `raw_ids` (see module docstring)."""
    wanted = Vocabulary()
    wanted.encode(pa.array(raw_ids, pa.string()))
    meta = _collect(spec, wanted, chunk_rows)
    out: dict[str, Callable[[], Modality]] = {}
    if spec.text:
        out["text"] = lambda: text_modality(meta.texts, encoder, progress=progress)
    if spec.attributes:
        out["attr"] = lambda: _attribute_bags(meta.tokens)
    for name, source in spec.vectors.items():
        out[name] = lambda source=source: _vector_modality(spec, source, meta, raw_ids)
    return out
