"""Chunked reading of tabular files with pyarrow: CSV, TSV, JSON lines, Parquet and RecBole atomic files.

`Table(path)` learns the format from the extension (`.csv`, `.tsv`, `.jsonl`/`.ndjson`,
`.parquet`/`.pq`, RecBole's `.inter`/`.item`; the text formats may be compressed, `.csv.gz`,
`.jsonl.bz2`, ...) and the column names from the header (RecBole's
`name:type` headers keep their types in `Table.types`). `Table.chunks(columns)` yields `Chunk`s of
about `chunk_rows` rows holding only those columns, so memory is bounded by the chunk, not the file.
Text formats are read as strings and parsed by the functions below (ids, numbers, timestamps,
texts, attribute tokens, vectors), so a bad value gets a `DataError` naming the file, its row
(1-based, header excluded) and its column.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from rodpo_dist.data.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".pq": "parquet", ".inter": "atomic", ".item": "atomic"}
_DELIMITERS = {"csv": ",", "tsv": "\t", "atomic": "\t"}
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open}
"""Compressed text formats (`events.csv.gz`): read through the decompressor, never unpacked on disk."""
_SECONDS = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}
_PEEK_BYTES = 1 << 20


@dataclass
class Chunk:
    """Consecutive rows of a table: `columns[name]` holds rows first_row.. (1-based, header excluded)."""

    path: Path
    first_row: int
    columns: dict[str, pa.Array]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def error(self, column: str, index: int, problem: str) -> DataError:
        """A DataError naming the file, the row of position `index` in this chunk and the column."""
        return DataError(self.path, problem, f"row {self.first_row + index}, column {column!r}")


class Table:
    """A tabular file opened for chunked reading (see module docstring)."""

    def __init__(self, path: str | Path, chunk_rows: int) -> None:
        self.path = Path(path)
        self.chunk_rows = chunk_rows
        self.opener = COMPRESSIONS.get(self.path.suffix.lower())
        suffix = Path(self.path.stem).suffix if self.opener else self.path.suffix
        fmt = FORMATS.get(suffix.lower())
        if fmt is None or (self.opener and fmt == "parquet"):
            extension = suffix + (self.path.suffix if self.opener else "")
            raise DataError(self.path, f"unsupported extension {extension!r}; expected one of {', '.join(FORMATS)}, "
                            f"the text ones optionally compressed ({', '.join(COMPRESSIONS)})")
        if not self.path.is_file():
            raise DataError(self.path, "does not exist")
        self.format = fmt
        self.names, self.types = self._header()

    def open(self) -> io.BufferedIOBase:
        """The file's bytes, decompressed."""
        return self.opener(self.path, "rb") if self.opener else open(self.path, "rb")

    def require(self, roles: dict[str, str]) -> None:
        """A DataError naming the file and every column of `roles` (column -> the setting that names
        it) that the header lacks."""
        missing = [c for c in roles if c not in self.names]
        if missing:
            problems = ", ".join(f"no column {c!r} ({roles[c]})" for c in missing)
            raise DataError(self.path, f"{problems}; its columns: {', '.join(self.names)}",
                            f"header, column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")

    def _header(self) -> tuple[list[str], dict[str, str]]:
        if self.format == "parquet":
            try:
                return list(pq.read_schema(self.path).names), {}
            except (pa.ArrowException, OSError) as err:
                raise DataError(self.path, f"not a readable Parquet file ({err})") from None
        # a BOM is not part of the first name
        with io.TextIOWrapper(self.open(), encoding="utf-8-sig", newline="") as f:
            if self.format == "jsonl":
                return self._json_keys(f), {}
            first = f.readline().rstrip("\r\n")
        if not first:
            raise DataError(self.path, "empty file: expected a header line", "line 1")
        if self.format != "atomic":
            return [h.strip() for h in next(csv.reader([first], delimiter=_DELIMITERS[self.format]))], {}
        names, types = [], {}
        for field in first.split("\t"):
            name, sep, kind = field.strip().rpartition(":")
            if not sep or not name:
                raise DataError(self.path, f"RecBole header field {field!r} is not `name:type`", "line 1")
            names.append(name)
            types[name] = kind
        return names, types

    def _json_keys(self, f: io.TextIOBase) -> list[str]:
        """The keys of the first `chunk_rows` records (at most 1000), in order of appearance."""
        keys: dict[str, None] = {}
        for lineno, line in enumerate(islice(f, min(self.chunk_rows, 1000)), 1):
            if line.strip():
                try:
                    keys.update(dict.fromkeys(json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    raise DataError(self.path, f"not a JSON object: {line.strip()[:80]!r}", f"line {lineno}") from None
        if not keys:
            raise DataError(self.path, "no records")
        return list(keys)

    def chunks(self, columns: list[str]) -> Iterator[Chunk]:
        """Chunks of the file holding `columns` (checked with `require` first)."""
        columns = list(dict.fromkeys(columns))
        first = 1
        try:
            for batch in self._batches(columns):
                chunk = Chunk(self.path, first, batch)
                first += len(chunk)
                yield chunk
        except pa.ArrowInvalid as err:
            raise DataError(self.path, f"unreadable {self.format} data, in or after row {first} ({err})") from None

    def _batches(self, columns: list[str]) -> Iterator[dict[str, pa.Array]]:
        if self.format == "parquet":
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.chunk_rows, columns=columns):
                yield {c: batch.column(c) for c in columns}
        elif self.format == "jsonl":
            with self.open() as f:
                while lines := list(islice(f, self.chunk_rows)):
                    try:
                        table = pa_json.read_json(io.BytesIO(b"".join(lines)))
                    except pa.ArrowInvalid:  # e.g. ids that are numbers in some records, strings in others
                        yield _json_records(lines, columns)
                        continue
                    yield {c: (table.column(c).combine_chunks() if c in table.column_names
                               else pa.nulls(table.num_rows, pa.string())) for c in columns}
        else:
            atomic = self.format == "atomic"
            with self.open() if self.opener else nullcontext(self.path) as source:  # a path: pyarrow's own reads
                reader = pa_csv.open_csv(
                    source,
                    read_options=pa_csv.ReadOptions(block_size=self._block_bytes(), skip_rows=int(atomic),
                                                    column_names=self.names if atomic else None),
                    parse_options=pa_csv.ParseOptions(delimiter=_DELIMITERS[self.format],
                                                      quote_char=False if atomic else '"'),
                    convert_options=pa_csv.ConvertOptions(include_columns=columns,
                                                          column_types=dict.fromkeys(columns, pa.string())))
                for batch in reader:
                    yield {c: batch.column(c) for c in columns}

    def _block_bytes(self) -> int:
        """CSV block size for about `chunk_rows` rows, from the mean line length of the file's first MiB."""
        with self.open() as f:
            head = f.read(_PEEK_BYTES)
        per_line = len(head) / max(head.count(b"\n"), 1)
        return int(min(max(per_line * self.chunk_rows, 1 << 16), (1 << 31) - 1))


def _json_records(lines: list[bytes], columns: list[str]) -> dict[str, pa.Array]:
    """JSON lines pyarrow cannot read as one table (a column whose values change type), record by
    record: scalars as strings (as the text formats give them to the parsers), lists as lists."""
    records = []
    for line in lines:
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise pa.ArrowInvalid(f"not JSON: {err.msg} in {line.strip()[:80]!r}") from None
    out = {}
    for column in columns:
        values = [r.get(column) if isinstance(r, dict) else None for r in records]
        if any(isinstance(v, list) for v in values):
            out[column] = pa.array([v if isinstance(v, list) or v is None else [v] for v in values])
        else:
            out[column] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return out


def _strings(chunk: Chunk, column: str) -> pa.StringArray:
    """The column as trimmed strings (nulls kept)."""
    array = chunk.columns[column]
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        array = pc.binary_join(pc.cast(array, pa.list_(pa.string())), ", ")
    return pc.utf8_trim_whitespace(pc.cast(array, pa.string()))


def _first_null(array: pa.Array) -> int:
    return int(np.argmax(array.is_null().to_numpy(zero_copy_only=False)))


def _first_empty(strings: pa.StringArray) -> int | None:
    empty = pc.or_kleene(pc.is_null(strings), pc.equal(strings, "")).fill_null(True).to_numpy(zero_copy_only=False)
    return int(np.argmax(empty)) if empty.any() else None


def ids(chunk: Chunk, column: str) -> pa.StringArray:
    """Raw ids as strings (numbers in their decimal form); an empty id is an error."""
    out = _strings(chunk, column)
    bad = _first_empty(out)
    if bad is not None:
        raise chunk.error(column, bad, "empty id")
    return out


def _finite(chunk: Chunk, column: str, values: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(values)
    if bad.any():
        raise chunk.error(column, int(np.argmax(bad)), f"{what} is {values[np.argmax(bad)]} (not a finite number)")
    return values


def numbers(chunk: Chunk, column: str, what: str) -> np.ndarray:
    """A numeric column (numbers, or strings holding them) as float64; empty or unparsable values are errors."""
    array = chunk.columns[column]
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        if array.null_count:
            raise chunk.error(column, _first_null(array), f"empty {what}")
        return _finite(chunk, column, array.to_numpy(zero_copy_only=False).astype(np.float64), what)
    strings = _strings(chunk, column)
    try:
        return _finite(chunk, column, pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False), what)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for index, text in enumerate(strings.to_pylist()):
            try:
                float(text)
            except (TypeError, ValueError):
                raise chunk.error(column, index, f"unparsable {what} {text!r} (expected a number)") from None
        raise


def _seconds(array: pa.Array) -> np.ndarray:
    """Timestamps or dates -> float64 seconds since the epoch (UTC; naive values read as UTC)."""
    if pa.types.is_date(array.type):
        array = pc.cast(array, pa.timestamp("s"))
    return array.cast(pa.int64()).to_numpy(zero_copy_only=False) / _SECONDS[array.type.unit]


def _iso_seconds(text: str) -> float:
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def timestamps(chunk: Chunk, column: str) -> np.ndarray:
    """Numbers (any unit) or ISO-8601 times (naive ones as UTC) -> float64; unparsable values are errors."""
    array = chunk.columns[column]
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        if array.null_count:
            raise chunk.error(column, _first_null(array), "empty timestamp")
        return _seconds(array)
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        return numbers(chunk, column, "timestamp")
    strings = _strings(chunk, column)
    bad = _first_empty(strings)
    if bad is not None:
        raise chunk.error(column, bad, "empty timestamp")
    for target in (pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
        try:
            parsed = pc.cast(strings, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        values = parsed.to_numpy(zero_copy_only=False) if target == pa.float64() else _seconds(parsed)
        return _finite(chunk, column, values, "timestamp")
    values = np.empty(len(strings))
    for index, text in enumerate(strings.to_pylist()):  # mixed forms in one chunk: value by value
        try:
            values[index] = float(text)
        except ValueError:
            try:
                values[index] = _iso_seconds(text)
            except ValueError:
                raise chunk.error(column, index, f"unparsable timestamp {text!r} (expected a number or "
                                  "ISO-8601, e.g. 2024-05-01T12:00:00Z)") from None
    return _finite(chunk, column, values, "timestamp")


def texts(chunk: Chunk, column: str) -> list[str | None]:
    """Text values (lists joined with ', '); empty ones are None."""
    return [t or None for t in _strings(chunk, column).to_pylist()]


def tokens(chunk: Chunk, column: str, separator: str) -> list[list[str]]:
    """Attribute values per row: list elements, or a string split at `separator` ('' = not split)."""
    array = chunk.columns[column]
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return [[str(v).strip() for v in row if v is not None and str(v).strip()] if row else []
                for row in array.to_pylist()]
    out = []
    for text in _strings(chunk, column).to_pylist():
        parts = text.split(separator) if text and separator else [text] if text else []
        out.append([p.strip() for p in parts if p.strip()])
    return out


_VECTOR_PUNCTUATION = str.maketrans(",[]", "   ")
"""Separators of a vector written as text: `0.1 0.2`, `0.1,0.2` or `[0.1, 0.2]` (JSON, pandas)."""


def vectors(chunk: Chunk, column: str, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, matrix): the positions of rows holding a vector and their float32 [len(rows), dim] values.

    A list column, or strings of numbers split at spaces or commas (brackets ignored); null / empty = no vector. Every
    vector has `dim` values (None: the first one's); another length, a NaN or an inf is an error.
    """
    array = chunk.columns[column]
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        rows_list = array.to_pylist()
    else:
        rows_list = [None if not t else t.translate(_VECTOR_PUNCTUATION).split()
                     for t in _strings(chunk, column).to_pylist()]
    rows, values = [], []
    for index, row in enumerate(rows_list):
        if not row:
            continue
        dim = len(row) if dim is None else dim
        if len(row) != dim:
            raise chunk.error(column, index, f"vector of length {len(row)}; the others have {dim}")
        try:
            with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
                values.append(np.asarray(row, dtype=np.float32))
        except (TypeError, ValueError):
            raise chunk.error(column, index, f"not a vector of numbers: {str(row)[:80]}") from None
        rows.append(index)
    matrix = np.stack(values) if values else np.zeros((0, dim or 0), np.float32)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise chunk.error(column, rows[int(np.argmax(bad))], "NaN or inf in the vector, or a value beyond float32's "
                          "range")
    return np.asarray(rows, dtype=np.int64), matrix
