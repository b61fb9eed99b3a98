"""WebDataset tar shards: writing, streaming raw samples, and safe decoding.

Shards are plain POSIX ustar archives (readable by tarfile and webdataset), written and read by a
small dedicated codec here because tarfile costs ~100-200 us per member. A sample is the group of
members `<key>.<name>.<ext>` sharing a key. Only `.npy` (never unpickled) and `.json` members are
ever decoded; any other extension (`.pyd`, `.pickle`, ...) is refused, so nothing in a shard can
execute code. Corrupt or truncated shards raise `DataError` naming the shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rodpo_dist.data.errors import DataError

@lru_cache(maxsize=4096)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """`.npy` file bytes of an array (what np.save writes, with the header cached per shape)."""
    array = np.ascontiguousarray(array)
    return _npy_header(np.lib.format.dtype_to_descr(array.dtype), array.shape) + array.tobytes()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar member header (regular file, mode 0444, mtime 0) as tarfile would write it."""
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = b"".join([raw.ljust(100, b"\0"), b"0000444\0", b"0000000\0", b"0000000\0", b"%011o\0" % size,
                       b"00000000000\0", b" " * 8, b"0", bytes(100), b"ustar\x0000", bytes(32 + 32 + 8 + 8 + 155 + 12)])
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


def write_shard(path: str | Path, samples: Iterable[dict[str, Any]]) -> str:
    """Write samples (`__key__` plus `name.ext` -> bytes) as a tar shard; returns its sha256.

    A plain ustar writer (tarfile's costs ~100 us per member): members `<key>.<name.ext>` in sample
    order, fixed metadata, so the same samples always give the same bytes and checksum.
    """
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        def put(data: bytes) -> None:
            f.write(data)
            digest.update(data)

        for sample in samples:
            for name, data in sample.items():
                if name != "__key__":
                    put(_ustar_header(f"{sample['__key__']}.{name}", len(data)))
                    put(data + bytes(-len(data) % 512))
        put(bytes(1024))
    return digest.hexdigest()


def _members(f: BinaryIO, path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, data) of the regular-file members of an uncompressed ustar/pax stream, checking each header."""
    pax_name = None
    while True:
        header = f.read(512)
        if len(header) < 512:
            raise DataError(path, "truncated shard: ends without the end-of-archive marker")
        if header == bytes(512):
            return
        try:
            stored_sum = int(header[148:156].strip(b"\0 ") or b"-1", 8)
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            stored_sum = size = -1
        if stored_sum != sum(header[:148]) + 256 + sum(header[156:]) or size < 0:
            raise DataError(path, f"corrupt shard: bad tar header at byte {f.tell() - 512}")
        name = header[:100].rstrip(b"\0").decode(errors="replace")
        data = f.read(size)
        if len(data) < size:
            raise DataError(path, f"truncated shard: member {name!r} has {len(data)} of {size} bytes")
        f.read(-size % 512)
        kind = header[156:157]
        if kind == b"x":  # pax extended header: only a long `path` matters here
            pax_name = next((rec.partition(b"=")[2].decode() for rec in data.split(b"\n")
                             if rec.partition(b" ")[2].startswith(b"path=")), None)
            continue
        if kind in (b"0", b"\0"):
            yield pax_name or name, data
        elif kind not in (b"5", b"g"):  # directories and global pax headers carry no samples
            raise DataError(path, f"unsupported tar member type {kind!r}", f"member {name!r}")
        pax_name = None


def read_shard(path: str | Path, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard in order: `{"__key__", "__shard__", "name.ext": bytes}`.

    `expected`: the sample count the manifest lists; any other count raises DataError.
    """
    count = 0
    current: dict[str, Any] = {"__key__": None}
    try:
        with open(path, "rb") as f:
            for member, data in _members(f, path):
                key, _, name = member.partition(".")
                if key != current["__key__"]:
                    if current["__key__"] is not None:
                        count += 1
                        yield current
                    current = {"__key__": key, "__shard__": str(path)}
                current[name] = data
    except OSError as err:
        raise DataError(path, f"unreadable shard ({err})") from None
    if current["__key__"] is not None:
        count += 1
        yield current
    if expected is not None and count != expected:
        raise DataError(path, f"holds {count} samples but the manifest lists {expected} (truncated or replaced?)")


@lru_cache(maxsize=4096)
def _npy_meta(prefix: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    f = io.BytesIO(prefix)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        raise ValueError("object arrays are refused (they would need pickle)")
    return dtype, shape, fortran


def load_npy(data: bytes) -> np.ndarray:
    """An array from `.npy` bytes; never unpickles (object dtypes raise ValueError). Header parses are cached."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        raise ValueError("not .npy data")
    offset = 10 + struct.unpack("<H", data[8:10])[0] if data[6] == 1 else 12 + struct.unpack("<I", data[8:12])[0]
    dtype, shape, fortran = _npy_meta(bytes(data[:offset]))
    count = int(np.prod(shape))
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{len(data) - offset} data bytes for shape {shape} {dtype}")
    return np.frombuffer(data, dtype, count, offset).reshape(shape, order="F" if fortran else "C").copy()


DECODERS: dict[str, Callable[[bytes], Any]] = {"npy": load_npy, "json": json.loads}


def decode(sample: dict[str, Any], only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Decode a raw sample's members (`seq.npy` -> `seq`), those named in `only` if given.

    Every member's extension is checked first: anything but .npy and .json raises DataError.
    """
    where = f"key {sample['__key__']!r}"
    members = [(name, *name.rpartition(".")[::2]) for name in sample if not name.startswith("__")]
    for name, _, ext in members:
        if ext not in DECODERS:
            raise DataError(sample["__shard__"], f"refusing member {name!r}: extension {ext!r} is not "
                            f"{' or '.join('.' + e for e in DECODERS)} (pickles are never loaded)", where)
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for name, stem, ext in members:
        if only is not None and stem not in only:
            continue
        try:
            out[stem] = DECODERS[ext](sample[name])
        except ValueError as err:
            raise DataError(sample["__shard__"], f"undecodable member {name!r}: {err}", where) from None
    return out
