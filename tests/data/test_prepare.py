"""`prepare` end to end: sources, atomicity, stats, and the real Amazon Beauty data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rodpo_dist.data.prepare as prep
from rodpo_dist.data import DataError, load_item_features, load_split, verify
from rodpo_dist.data.prepare import prepare, stats

AMAZON = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "amazon"


def test_failed_prepare_leaves_nothing_complete_looking(tmp_path, data_config, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prep, "_write_items", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(data_config(), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_prepare_replaces_a_dataset_but_not_other_folders(tmp_path, data_config):
    out = tmp_path / "out"
    prepare(data_config(), out, progress=False)
    prepare(data_config(synthetic={"seed": 5}), out, progress=False)
    assert json.loads((out / "manifest.json").read_text())["source"]["config"]["synthetic"]["seed"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"mine: exists and is not a prepared dataset"):
        prepare(data_config(), other, progress=False)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]


def test_stats_table(small_dir):
    text = stats(small_dir)
    for words in ("users                   150", "items                   200", "modality attr", "bag int32 [3]",
                  "train shards            4 (150 records)", "sparsity"):
        assert words in text


def test_stats_report_the_popularity_skew(small_dir):
    test = load_split(small_dir, "test")  # a user's test history plus its target: all its interactions
    items = np.concatenate([np.append(seq, t) for seq, t in zip(test.sequences, test.targets)])
    counts = np.sort(np.bincount(items, minlength=201)[1:])[::-1]
    share = counts[:2].sum() / len(items)  # the top 1% of 200 items: 2
    assert f"the top 1% of items hold {share:.1%} of interactions" in stats(small_dir)
    assert 2 / 200 < share < 1  # skewed: more than their 1%


def test_s3rec_with_feature_file_and_float16(tmp_path, write_s3rec, data_config):
    folder = write_s3rec(tmp_path / "raw")
    np.save(tmp_path / "img.npy", np.random.default_rng(0).standard_normal((6, 5)))
    cfg = data_config(source="s3rec", path=str(folder), name="Tiny", modalities=["attr", "image"],
                      feature_files={"image": str(tmp_path / "img.npy")}, feature_dtype="float16")
    m = prepare(cfg, tmp_path / "out", progress=False)
    assert (m.num_users, m.num_items, m.num_interactions) == (4, 6, 15)
    assert m.modalities["attr"].vocab_size == 6 and m.modalities["image"].dtype == "float16"
    feats = load_item_features(tmp_path / "out")
    assert feats["image"].dtype.is_floating_point and feats["image"].shape == (7, 5)
    assert feats["attr"][1].tolist() == [2, 5]  # raw [1, 4] shifted by +1
    assert json.loads((tmp_path / "out" / "id_maps.json").read_text())["items"][0] == "ASIN1"
    verify(tmp_path / "out")


def test_s3rec_modality_not_available(tmp_path, write_s3rec, data_config):
    folder = write_s3rec(tmp_path / "raw")
    cfg = data_config(source="s3rec", path=str(folder), name="Tiny", modalities=["attr"])
    cfg.modalities = ["image"]  # bypass config validation to reach the data layer's own check
    with pytest.raises(DataError, match=r"modality 'image' is not available for source 's3rec'; available: attr, text"):
        prepare(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_feature_file_with_wrong_rows_via_prepare(tmp_path, write_s3rec, data_config):
    folder = write_s3rec(tmp_path / "raw")
    np.save(tmp_path / "img.npy", np.ones((9, 2)))
    cfg = data_config(source="s3rec", path=str(folder), name="Tiny", modalities=["image"],
                      feature_files={"image": str(tmp_path / "img.npy")})
    with pytest.raises(DataError, match=r"img\.npy: has 9 rows; expected 7"):
        prepare(cfg, tmp_path / "out", progress=False)


def test_generic_interactions_source(tmp_path, data_config):
    rows = [f"user{u},item{(u + k) % 8},{k}" for u in range(10) for k in range(5)]
    (tmp_path / "inter.csv").write_text("user,item,timestamp\n" + "\n".join(rows))
    cfg = data_config(source="interactions", path=str(tmp_path / "inter.csv"), modalities=[],
                      min_user_items=3, min_item_users=2)
    m = prepare(cfg, tmp_path / "out", progress=False)
    assert (m.num_users, m.num_items, m.num_interactions) == (10, 8, 50)
    maps = json.loads((tmp_path / "out" / "id_maps.json").read_text())
    assert maps["users"][0] == "user0" and maps["items"] == [f"item{i}" for i in range(8)]
    test = load_split(tmp_path / "out", "test")
    assert maps["items"][test.targets[0] - 1] == "item4"  # user0's last item (k = 4)


@pytest.mark.slow
@pytest.mark.skipif(not (AMAZON / "Beauty.txt").is_file(), reason="shared Amazon data not present")
def test_real_beauty_counts(tmp_path, data_config):
    cfg = data_config(source="s3rec", path=str(AMAZON), name="Beauty", modalities=["attr"])
    m = prepare(cfg, tmp_path / "beauty", progress=False)
    assert (m.num_users, m.num_items, m.num_interactions) == (22_363, 12_101, 198_502)
    assert m.modalities["attr"].vocab_size == 639
    assert round(m.stats["avg_seq_len"], 1) == 8.9


def test_a_dataset_prepared_from_other_settings_is_refused_not_reused(small_dir, data_config, tmp_path):
    from rodpo_dist.config import Config
    from rodpo_dist.data.prepare import ensure_prepared, prepared_mismatch

    (tmp_path / "other.npy").touch()
    base = data_config(prepared_dir=str(small_dir))
    assert prepared_mismatch(base, small_dir) == []
    # how it is read, a subset of its modalities, what its source or unused modalities never read: the same dataset
    for same in ({"prepared_dir": "elsewhere", "shuffle_buffer": 7, "item_block_size": 8, "modalities": ["attr"]},
                 {"min_user_items": 3, "text_encoder": "other-encoder", "columns": {"user": "uid"}},
                 {"modalities": ["attr"], "feature_files": {"image": str(tmp_path / "other.npy")}}):
        assert prepared_mismatch(data_config(**same), small_dir) == [], same
    changed = data_config(prepared_dir=str(small_dir), feature_dtype="float16", synthetic={"num_items": 300})
    assert prepared_mismatch(changed, small_dir) == ["data.feature_dtype: 'float16', prepared with 'float32'",
                                                     "data.synthetic.num_items: 300, prepared with 200"]
    with pytest.raises(DataError, match=r"prepared from other data settings: data\.feature_dtype: 'float16'"):
        ensure_prepared(Config(data=changed))
    ensure_prepared(Config(data=base))  # fits: nothing to do


def test_a_file_source_is_compared_by_the_file_it_names(tmp_path, data_config, monkeypatch):
    from rodpo_dist.data.prepare import prepared_mismatch

    (tmp_path / "inter.csv").write_text("user,item,timestamp\n" + "".join(
        f"u{u},i{(u + k) % 7},{k}\n" for u in range(6) for k in range(5)))
    monkeypatch.chdir(tmp_path)
    cfg = data_config(source="interactions", path="inter.csv", modalities=[], min_item_users=1)
    prepare(cfg, tmp_path / "prepared", progress=False)
    absolute = data_config(source="interactions", path=str(tmp_path / "inter.csv"), modalities=[], min_item_users=1)
    assert prepared_mismatch(absolute, tmp_path / "prepared") == []
    (tmp_path / "other.csv").write_text((tmp_path / "inter.csv").read_text())
    assert prepared_mismatch(data_config(source="interactions", path="other.csv", modalities=[], min_item_users=1,
                                         min_user_items=4), tmp_path / "prepared") == [
        "data.min_user_items: 4, prepared with 5", "data.path: 'other.csv', prepared with 'inter.csv'"]


def test_a_dataset_fits_by_defaults_for_settings_it_predates_but_not_with_unprepared_modalities(small_copy,
                                                                                               data_config):
    from rodpo_dist.data.manifest import MANIFEST_FILE, load_manifest
    from rodpo_dist.data.prepare import prepared_mismatch

    base = data_config(prepared_dir=str(small_copy))
    manifest = json.loads((small_copy / MANIFEST_FILE).read_text())
    manifest["source"]["config"]["modalities"] = ["attr"]  # as if prepared with attributes only
    del manifest["source"]["config"]["feature_dtype"]  # and before this setting existed
    (small_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert load_manifest(small_copy).source["config"]["modalities"] == ["attr"]
    assert prepared_mismatch(data_config(modalities=["attr", "text"]), small_copy) == [
        "data.modalities: text not prepared (prepared: ['attr'])"]
    base = data_config(prepared_dir=str(small_copy), modalities=["attr"])
    assert prepared_mismatch(base, small_copy) == []  # the setting at its default: the same dataset
    assert prepared_mismatch(data_config(feature_dtype="float16", modalities=["attr"]), small_copy) == [
        "data.feature_dtype: 'float16', prepared with 'float32'"]
