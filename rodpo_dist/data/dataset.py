"""A prepared dataset folder opened for training and evaluation: manifest, item features, splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rodpo_dist.data.contexts import Contexts
from rodpo_dist.data.loader import load_item_features, load_split
from rodpo_dist.data.manifest import MANIFEST_FILE, Manifest, load_manifest
from rodpo_dist.data.rejections import REJECTIONS_FILE, Rejections
from rodpo_dist.data.synthetic import TRUTH_FILE, GroundTruth


@dataclass
class PreparedDataset:
    dir: Path
    manifest: Manifest
    features: dict[str, torch.Tensor]
    valid: Contexts
    test: Contexts
    truth: GroundTruth | None
    """The ground truth of a synthetic catalog (who likes what), None for real data."""
    rejections: Rejections | None = None
    """The users' observed rejections (training and held out), when the dataset records them."""


def load_dataset(prepared_dir: str | Path, modalities: list[str]) -> PreparedDataset:
    """Open the prepared dataset at `prepared_dir` (see `rodpo data prepare`) with `modalities`."""
    root = Path(prepared_dir)
    if not (root / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"data.prepared_dir: no prepared dataset at {root} ({MANIFEST_FILE} missing); "
                                f"run `rodpo data prepare --config <your config>` first")
    manifest = load_manifest(root)
    features = load_item_features(root, modalities)
    valid, test = (Contexts.from_split(load_split(root, split)) for split in ("valid", "test"))
    truth = GroundTruth.load(root) if (root / TRUTH_FILE).is_file() else None
    rejections = Rejections.load(root) if (root / REJECTIONS_FILE).is_file() else None
    return PreparedDataset(root, manifest, features, valid, test, truth, rejections)
