"""S3-Rec and generic interaction readers: parsing, k-core, remapping and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.sources import (read_interactions, read_s3rec_attributes, read_s3rec_items,
                                     read_s3rec_sequences, s3rec_paths)


def test_s3rec_reads_sequences_attributes_and_items(tmp_path, write_s3rec):
    paths = s3rec_paths(write_s3rec(tmp_path), "Tiny")
    data = read_s3rec_sequences(paths["sequences"])
    assert (data.num_users, data.num_items, len(data.items)) == (4, 6, 15)
    assert data.sequence(4).tolist() == [6, 4, 2, 1, 3]
    attrs = read_s3rec_attributes(paths["attributes"], 6)
    assert attrs[0] == [] and attrs[2] == [2, 3]
    asins, texts = read_s3rec_items(paths["items"], 6)
    assert asins[0] == "ASIN1" and texts[5] == "item number 6"


@pytest.mark.parametrize("lines, record, words", [
    (["1 1 2 3", "2 2 x 4"], "line 2", "malformed line '2 2 x 4'"),
    (["1 1 2 3", "2 4 5"], "line 2", "user 2 has 2 items"),
    (["1 1 2 3", "2"], "line 2", "user 2 has an empty history"),
    (["1 1 2 3", "1 2 3 4"], "line 2", "user id 1 is repeated"),
    (["1 1 2 3", "2 0 2 3"], "line 2", "item id 0 out of range"),
    (["1 1 2 3", "3 1 2 3"], "", "user 2 is missing"),
    (["1 1 2 4", "2 1 2 4"], "", "item 3 never occurs"),
])
def test_s3rec_sequence_errors_name_file_and_line(tmp_path, write_s3rec, lines, record, words):
    path = s3rec_paths(write_s3rec(tmp_path, lines=lines), "Tiny")["sequences"]
    with pytest.raises(DataError) as err:
        read_s3rec_sequences(path)
    assert str(path) in str(err.value) and record in str(err.value) and words in str(err.value)


def test_s3rec_attribute_item_out_of_range(tmp_path, write_s3rec):
    path = s3rec_paths(write_s3rec(tmp_path, attrs={"1": [1], "9": [2]}), "Tiny")["attributes"]
    with pytest.raises(DataError, match=r"Tiny_item2attributes\.json, key '9': item id '9' out of range 1\.\.6"):
        read_s3rec_attributes(path, 6)


def test_s3rec_items_tsv_errors(tmp_path, write_s3rec):
    path = s3rec_paths(write_s3rec(tmp_path, items=["1\tA\tx", "7\tB\ty"]), "Tiny")["items"]
    with pytest.raises(DataError, match=r"Tiny_items\.tsv, line 3: item id 7 out of range 1\.\.6"):
        read_s3rec_items(path, 6)
    path.write_text("item_id\tasin\ttext\n1\tA\n")
    with pytest.raises(DataError, match=r"Tiny_items\.tsv, line 2: malformed line"):
        read_s3rec_items(path, 6)


def _rows(n_users: int = 6, n_items: int = 5):
    """Every user rates every item, in reverse time order, plus noise users and items."""
    rows = [(f"u{u}", f"i{i}", 100 - i) for u in range(n_users) for i in range(n_items)]
    rows += [("lonely", "i0", 1), ("lonely", "i1", 2)]  # 2 items: dropped (< 3)
    rows += [(f"u{u}", "rare", 5) for u in range(2)]  # rated by 2 users: dropped by min_item_users=3
    rows += [("u0", "i0", 50)]  # repeated (user, item): the first (earlier) occurrence wins
    return rows


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_generic_kcore_and_remap(tmp_path, fmt):
    path = tmp_path / f"inter.{fmt}"
    rows = _rows()
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps({"user": u, "item": i, "timestamp": t}) for u, i, t in rows))
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text(f"timestamp{sep}user{sep}item\n" + "\n".join(f"{t}{sep}{u}{sep}{i}" for u, i, t in rows))
    data = read_interactions(path, min_user_items=3, min_item_users=3)
    assert data.user_ids == [f"u{u}" for u in range(6)]
    assert data.item_ids == [f"i{i}" for i in range(5)]
    assert (data.num_users, data.num_items) == (6, 5)
    # chronological (i4 at time 96 ... i0 at 100); u0 also had i0 at time 50: the earliest occurrence is kept
    assert data.sequence(2).tolist() == [5, 4, 3, 2, 1]
    assert data.sequence(1).tolist() == [1, 5, 4, 3, 2]
    assert np.all(data.lengths == 5)


def test_generic_kcore_iterates_to_fixpoint(tmp_path):
    # item "b" has 3 users, but one of them ("x") drops (2 items), which then drops "b" (2 users left)
    rows = [(u, i, 0) for u in ("p", "q", "r") for i in ("a", "c", "d")] + [("p", "b", 1), ("q", "b", 1)]
    rows += [("x", "b", 0), ("x", "a", 1)]
    path = tmp_path / "inter.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(f"{u},{i},{t}" for u, i, t in rows))
    data = read_interactions(path, min_user_items=3, min_item_users=3)
    assert data.item_ids == ["a", "c", "d"] and data.user_ids == ["p", "q", "r"]


def test_generic_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user,item,timestamp\nu1,i1,5\nu1,i2,yesterday\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 3: malformed line 'u1,i2,yesterday'"):
        read_interactions(path, 1, 1)
    path.write_text("user,item\nu1,i1\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 1: header must name columns user, item, timestamp"):
        read_interactions(path, 1, 1)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user": 1, "item": 2, "timestamp": 3}\n{"user": 1, "item": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: malformed line"):
        read_interactions(path, 1, 1)
    path.write_text('{"user": 1, "item": 2, "timestamp": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: no interactions left after k-core"):
        read_interactions(path, 1, 1)
