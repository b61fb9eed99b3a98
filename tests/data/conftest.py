"""Shared fixtures of the data-layer tests: a small prepared synthetic dataset and S3-Rec writers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rodpo_dist.config import DataConfig, config_from_dict
from rodpo_dist.data.prepare import prepare

SMALL = {"synthetic": {"num_items": 200, "num_users": 150, "max_seq_len": 20, "num_clusters": 8},
         "users_per_shard": 40, "items_per_shard": 64, "item_block_size": 16}
"""150 users in 4 shards per split (not divisible by 2 ranks x 2 workers), 200 items in 4 shards."""


def data_config(**overrides) -> DataConfig:
    raw = json.loads(json.dumps(SMALL))
    for key, value in overrides.items():
        if key == "synthetic":
            raw["synthetic"].update(value)
        else:
            raw[key] = value
    return config_from_dict({"data": raw}).data


@pytest.fixture(name="data_config")
def data_config_fixture():
    """`data_config(**overrides)`: the small validated DataConfig with overrides."""
    return data_config


@pytest.fixture(name="write_s3rec")
def write_s3rec_fixture():
    """`write_s3rec(folder, ...)`: write a tiny S3-Rec folder (see `write_s3rec`)."""
    return write_s3rec


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory) -> Path:
    """A prepared small synthetic dataset; read-only (copy it with `small_copy` to modify)."""
    out = tmp_path_factory.mktemp("prepared") / "small"
    prepare(data_config(), out, progress=False)
    return out


@pytest.fixture
def small_copy(small_dir, tmp_path) -> Path:
    return Path(shutil.copytree(small_dir, tmp_path / "copy"))


def write_s3rec(folder: Path, name: str = "Tiny", lines: list[str] | None = None,
                attrs: dict[str, list[int]] | None = None, items: list[str] | None = None) -> Path:
    """A tiny S3-Rec folder: 4 users over 6 items (all valid unless overridden)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = lines if lines is not None else ["1 1 2 3", "2 2 3 4 5", "3 5 6 1", "4 6 4 2 1 3"]
    attrs = attrs if attrs is not None else {str(i): [i % 3, 3 + i % 2] for i in range(1, 7)}
    items = items if items is not None else [f"{i}\tASIN{i}\titem number {i}" for i in range(1, 7)]
    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (folder / f"{name}_item2attributes.json").write_text(json.dumps(attrs))
    (folder / f"{name}_items.tsv").write_text("item_id\tasin\ttext\n" + "\n".join(items) + "\n")
    return folder
