"""S3-Rec readers: parsing and clear errors."""

from __future__ import annotations

import pytest

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.sources import read_s3rec_attributes, read_s3rec_items, read_s3rec_sequences, s3rec_paths


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
