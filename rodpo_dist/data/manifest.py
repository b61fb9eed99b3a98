"""`manifest.json`: what a prepared dataset folder holds, with shard checksums. Written last."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.features import ModalitySpec
from rodpo_dist.data.shards import sha256_file
from rodpo_dist.data.split import SPLITS

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ITEMS = "items"
SHARD_GROUPS = (*SPLITS, ITEMS)


@dataclass
class ShardInfo:
    """One tar shard; `count` = records in it (users for splits, items for `items`)."""

    name: str
    count: int
    sha256: str


@dataclass
class Manifest:
    name: str
    source: dict[str, Any]
    """type, paths and the data config that produced the folder."""
    num_users: int
    num_items: int
    num_interactions: int
    modalities: dict[str, ModalitySpec]
    shards: dict[str, list[ShardInfo]]
    """Per group (`train`, `valid`, `test`, `items`), in order."""
    item_block_size: int
    stats: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    """Other files in the folder (e.g. `truth.npz`, `id_maps.json`) -> sha256."""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["item_id_range"] = [1, self.num_items]
        out["user_id_range"] = [1, self.num_users]
        return out

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / MANIFEST_FILE
        path.with_suffix(".tmp").write_text(json.dumps(self.to_dict(), indent=1))
        path.with_suffix(".tmp").rename(path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: Path) -> Manifest:
        try:
            if raw["format_version"] != FORMAT_VERSION:
                raise DataError(where, f"format_version {raw['format_version']} is not {FORMAT_VERSION}",
                                "key 'format_version'")
            raw = dict(raw)
            ranges = raw.pop("item_id_range"), raw.pop("user_id_range")
            raw["modalities"] = {k: ModalitySpec(**v) for k, v in raw["modalities"].items()}
            raw["shards"] = {k: [ShardInfo(**s) for s in v] for k, v in raw["shards"].items()}
            manifest = cls(**raw)
        except (KeyError, TypeError) as err:
            raise DataError(where, f"missing or malformed field ({type(err).__name__}: {err})") from None
        if list(ranges) != [[1, manifest.num_items], [1, manifest.num_users]]:
            raise DataError(where, f"id ranges {ranges} do not match num_items/num_users", "key 'item_id_range'")
        return manifest


def load_manifest(directory: str | Path) -> Manifest:
    """Read and cross-check `manifest.json` against the folder (not the checksums: see `verify`)."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise DataError(path, "missing: not a prepared dataset folder (run `rodpo data prepare`)")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()), path)
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg}", f"line {err.lineno}") from None
    expected = {**{s: manifest.num_users for s in SPLITS}, ITEMS: manifest.num_items}
    for group, total in expected.items():
        shards = manifest.shards.get(group)
        if shards is None:
            raise DataError(path, f"no shard list for {group!r}", "key 'shards'")
        if sum(s.count for s in shards) != total:
            raise DataError(path, f"{group} shards hold {sum(s.count for s in shards)} records, expected {total}",
                            f"key 'shards.{group}'")
        for s in shards:
            if not (directory / s.name).is_file():
                raise DataError(directory / s.name, f"shard listed in {path} is missing")
        on_disk = sorted(p.name for p in directory.glob(f"{group}-*.tar"))
        if on_disk != sorted(s.name for s in shards):
            raise DataError(path, f"{group}: {len(on_disk)} shard files on disk, {len(shards)} listed",
                            f"key 'shards.{group}'")
    for name in manifest.files:
        if not (directory / name).is_file():
            raise DataError(directory / name, f"file listed in {path} is missing")
    return manifest


def verify(directory: str | Path) -> Manifest:
    """`load_manifest` plus the sha256 of every shard and file; DataError names the first mismatch."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    listed = [(s.name, s.sha256) for group in SHARD_GROUPS for s in manifest.shards[group]]
    for name, digest in listed + list(manifest.files.items()):
        if sha256_file(directory / name) != digest:
            raise DataError(directory / name, "checksum differs from the manifest (corrupt or modified)")
    return manifest
