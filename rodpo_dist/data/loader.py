"""Reading a prepared dataset folder: item features, whole splits, and streaming sequence batches.

Distributed coverage policy of `sequence_loader`: every reader (rank x worker) walks all shards of
the split in the same epoch order and keeps the samples whose position `g` in that order satisfies
`g % (world_size * num_workers) == rank * num_workers + worker`. So each epoch reads every sample
exactly once across all readers for any shard count, and reader sample counts differ by at most
one (batch counts per rank may still differ by one: a trainer that needs equal step counts across
ranks should agree on the minimum). The price is that every reader scans (not decodes) all shards.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from rodpo_dist.config.validate import MISSING_SUFFIX
from rodpo_dist.data.batching import window_batches
from rodpo_dist.data.errors import DataError
from rodpo_dist.data.manifest import ITEMS, MANIFEST_FILE, Manifest, load_manifest
from rodpo_dist.data.shards import decode, read_shard
from rodpo_dist.data.split import SPLITS


def _modalities(directory: Path, manifest: Manifest, names: list[str] | None) -> list[str]:
    """`names` (None: all), each followed by its missing indicator when the dataset has one."""
    if names is None:
        return list(manifest.modalities)
    for name in names:
        if name not in manifest.modalities:
            raise DataError(directory / MANIFEST_FILE, f"unknown modality {name!r}; known: "
                            f"{', '.join(manifest.modalities) or '(none)'}")
    return [m for name in names for m in (name, name + MISSING_SUFFIX) if m in manifest.modalities]


def iter_item_blocks(directory: str | Path, modalities: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of consecutive items in id order: `{"ids": int64 [n], <modality>: [n, dim]}`."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    names = _modalities(directory, manifest, modalities)
    for shard in manifest.shards[ITEMS]:
        for raw in read_shard(directory / shard.name, None):
            sample = decode(raw, only=("ids", *names))
            missing = [n for n in ("ids", *names) if n not in sample]
            if missing:
                raise DataError(directory / shard.name, f"block lacks member(s) {', '.join(missing)}",
                                f"key {raw['__key__']!r}")
            yield {n: sample[n] for n in ("ids", *names)}


def load_item_features(directory: str | Path, modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Item features by modality, row i = item id i, row 0 = padding (zeros / 0); a modality named in
    `modalities` brings its missing indicator `<name>_missing` along when the dataset has one.

    Dense: float tensor [N+1, dim] in the stored dtype (float32 or float16); bag: long [N+1, max_len].
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    names = _modalities(directory, manifest, modalities)
    n = manifest.num_items
    out = {m: np.zeros((n + 1, manifest.modalities[m].dim), dtype=manifest.modalities[m].dtype) for m in names}
    filled = 0
    for block in iter_item_blocks(directory, names):
        ids = block["ids"]
        if len(ids) and ids[-1] > n:
            raise DataError(directory / MANIFEST_FILE, f"item shards hold item id {ids[-1]}, beyond num_items={n}")
        if len(ids) and (ids[0] != filled + 1 or not (np.diff(ids) == 1).all()):
            raise DataError(directory, f"item blocks out of order: block starting at id {ids[0]} after id {filled}")
        for m in names:
            out[m][ids] = block[m]
        filled += len(ids)
    if filled != n:
        raise DataError(directory / MANIFEST_FILE, f"item shards give {filled} item rows, manifest says num_items={n}")
    return {m: torch.from_numpy(a.astype(np.int64) if manifest.modalities[m].kind == "bag" else a)
            for m, a in out.items()}


@dataclass
class SplitData:
    """A whole split in memory, users in order 1..U (each exactly once)."""

    users: np.ndarray
    sequences: list[np.ndarray]
    """Training sequence (train) or history (valid/test) per user."""
    targets: np.ndarray
    """Target item per user; -1 for train."""


def load_split(directory: str | Path, split: str) -> SplitData:
    """Map-style fast path: read a split fully (for evaluation and small datasets)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    samples = [decode(raw) for s in _split_shards(directory, manifest, split) for raw in read_shard(*s)]
    return SplitData(np.array([s["meta"]["user"] for s in samples], dtype=np.int64),
                     [s["seq"].astype(np.int64) for s in samples],
                     np.array([s["meta"]["target"] for s in samples], dtype=np.int64))


def _split_shards(directory: Path, manifest: Manifest, split: str) -> list[tuple[Path, int]]:
    if split not in SPLITS:
        raise DataError(directory / MANIFEST_FILE, f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return [(directory / s.name, s.count) for s in manifest.shards[split]]


def collate(samples: list[dict[str, Any]], max_len: int) -> dict[str, torch.Tensor]:
    """Batch dict: user [B], seq [B, W] left-padded with 0 (last W items kept), target [B].

    W = min(max_len, longest sequence in the batch): no compute is spent on columns of padding.
    """
    width = max(1, min(max_len, max(len(s["seq"]) for s in samples)))
    seq = torch.zeros(len(samples), width, dtype=torch.long)
    for row, s in enumerate(samples):
        tail = s["seq"][-width:]
        if len(tail):
            seq[row, width - len(tail):] = torch.from_numpy(tail.astype(np.int64))
    return {"user": torch.tensor([s["meta"]["user"] for s in samples], dtype=torch.long), "seq": seq,
            "target": torch.tensor([s["meta"]["target"] for s in samples], dtype=torch.long)}


@dataclass
class _Stream:
    """The per-epoch batch stream of one reader (rank x DataLoader worker); see module docstring."""

    shards: list[tuple[Path, int]]
    shuffle: bool
    shuffle_buffer: int
    seed: int
    epoch: int
    rank: int
    world_size: int
    batch_size: int
    max_len: int
    length_window: int

    def __call__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers, slot = self.world_size * workers, self.rank * workers + worker
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(order)
        mine = (raw for g, raw in enumerate(r for i in order for r in read_shard(*self.shards[i]))
                if g % readers == slot)
        if self.shuffle:
            rng = random.Random(f"buffer-{self.seed}-{self.epoch}-{slot}-{readers}")
            mine = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(mine)
        window = self.length_window if self.shuffle else 1
        batches = window_batches(map(decode, mine), lambda s: len(s["seq"]), self.batch_size, window,
                                 np.random.default_rng([self.seed, self.epoch, slot, readers]))
        return (collate(b, self.max_len) for b in batches)


def sequence_loader(directory: str | Path, split: str, batch_size: int, max_len: int, *, shuffle: bool = True,
                    shuffle_buffer: int = 1000, seed: int = 0, epoch: int = 0, num_workers: int = 0,
                    rank: int = 0, world_size: int = 1, length_window: int = 1) -> DataLoader:
    """Stream one epoch of `split` as batches (see `collate`) for reader `rank` of `world_size`.

    Deterministic for (seed, epoch, world_size, num_workers); a new `epoch` reshuffles the shard
    order and the buffer. Call again per epoch. Exactly-once coverage across ranks x workers.
    With `length_window` > 1 (and `shuffle`) each reader's batches are cut from windows of that many
    batches sorted by length (`batching.window_batches`): the same samples, far less padding.
    """
    directory = Path(directory)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
    stream = _Stream(_split_shards(directory, load_manifest(directory), split), shuffle, max(1, shuffle_buffer),
                     seed, epoch, rank, world_size, batch_size, max_len, length_window)
    # its own generator: creating the iterator must not draw from the global RNG (exact resume)
    return DataLoader(wds.DataPipeline(stream), batch_size=None, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
