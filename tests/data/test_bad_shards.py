"""Corrupt, truncated, tampered or unsafe prepared data: clear DataErrors naming the file and record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rodpo_dist.data import DataError, load_item_features, load_manifest, load_split, verify
from rodpo_dist.data.shards import decode, json_bytes, npy_bytes, read_shard, write_shard


def test_verify_passes_then_names_a_modified_shard(small_copy):
    verify(small_copy)
    shard = small_copy / "valid-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"valid-000001\.tar: checksum differs"):
        verify(small_copy)


def test_verify_checks_every_shard_group_and_every_listed_file(small_copy):
    """Not only the split shards: the item shards and the files beside them (here the synthetic truth)."""
    manifest = load_manifest(small_copy)
    names = [s.name for s in manifest.shards["items"]] + list(manifest.files)
    assert any(n.startswith("items-") for n in names) and "truth.npz" in names
    for name in names:
        path = small_copy / name
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(DataError, match=rf"{name}: checksum differs"):
            verify(small_copy)
        path.write_bytes(original)
    verify(small_copy)


def test_truncated_shard_names_the_shard(small_copy):
    shard = small_copy / "test-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # mid-member
    with pytest.raises(DataError, match=r"test-000002\.tar: truncated shard"):
        load_split(small_copy, "test")
    shard.write_bytes(data[:512 * 8])  # cut at a header boundary, no end-of-archive marker
    with pytest.raises(DataError, match=r"test-000002\.tar: truncated shard"):
        load_split(small_copy, "test")


def test_shard_with_fewer_samples_than_listed(small_copy):
    shard = small_copy / "test-000000.tar"
    samples = list(read_shard(shard))[:-1]
    write_shard(shard, ({k: v for k, v in s.items() if k != "__shard__"} for s in samples))
    with pytest.raises(DataError, match=r"test-000000\.tar: holds 39 samples but the manifest lists 40"):
        load_split(small_copy, "test")


def test_corrupt_header_names_the_shard(small_copy):
    shard = small_copy / "train-000003.tar"
    data = bytearray(shard.read_bytes())
    data[0:4] = b"\xff\xfe\x00\x01"
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000003\.tar: corrupt shard: bad tar header at byte 0"):
        load_split(small_copy, "train")


@pytest.mark.parametrize("member", ["evil.pyd", "evil.pickle", "evil.pkl", "evil.txt"])
def test_pickle_or_unknown_member_is_refused(tmp_path, member):
    shard = tmp_path / "x.tar"
    write_shard(shard, [{"__key__": "000000001", "seq.npy": npy_bytes(np.arange(3)),
                         "meta.json": json_bytes({"user": 1, "target": -1}), member: b"\x80\x04K\x01."}])
    with pytest.raises(DataError, match=rf"x\.tar, key '000000001': refusing member '{member}'"):
        [decode(s) for s in read_shard(shard)]


def test_object_npy_member_is_refused(tmp_path):
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    shard = tmp_path / "x.tar"
    write_shard(shard, [{"__key__": "k", "seq.npy": buf.getvalue()}])
    with pytest.raises(DataError, match=r"x\.tar, key 'k': undecodable member 'seq\.npy': object arrays are refused"):
        [decode(s) for s in read_shard(shard)]


def _edit_manifest(directory, edit):
    path = directory / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_manifest_mismatches(small_copy):
    (small_copy / "train-000004.tar").write_bytes((small_copy / "train-000000.tar").read_bytes())
    with pytest.raises(DataError, match=r"manifest\.json, key 'shards.train': train: 5 shard files on disk, 4 listed"):
        load_manifest(small_copy)
    (small_copy / "train-000004.tar").unlink()
    (small_copy / "items-000001.tar").unlink()
    with pytest.raises(DataError, match=r"items-000001\.tar: shard listed in .*manifest\.json is missing"):
        load_manifest(small_copy)


def test_manifest_counts_must_add_up(small_copy):
    _edit_manifest(small_copy, lambda raw: raw["shards"]["valid"][0].update(count=39))
    with pytest.raises(DataError, match=r"manifest\.json, key 'shards.valid': valid shards hold 149 records, expected 150"):
        load_manifest(small_copy)


def test_num_items_vs_feature_rows(small_copy):
    def shrink(raw):
        raw["num_items"] -= 10
        raw["item_id_range"][1] -= 10
        raw["shards"]["items"][-1]["count"] -= 10
    _edit_manifest(small_copy, shrink)
    with pytest.raises(DataError, match=r"manifest\.json: item shards hold item id 192, beyond num_items=190"):
        load_item_features(small_copy)


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json: missing: not a prepared dataset folder"):
        load_manifest(tmp_path)
