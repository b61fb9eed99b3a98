"""What both training recipes start from: the prepared dataset and the model built for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rodpo_dist.config import Config
from rodpo_dist.data import Manifest, load_item_features, load_manifest, load_split
from rodpo_dist.eval.evaluate import Contexts
from rodpo_dist.model import SASRec, build_model
from rodpo_dist.model.expert_parallel import join_expert_groups


@dataclass
class Dataset:
    dir: Path
    manifest: Manifest
    features: dict[str, torch.Tensor]
    valid: Contexts
    test: Contexts


def load_dataset(cfg: Config) -> Dataset:
    """Open the prepared dataset named by `data.prepared_dir` (see `rodpo data prepare`)."""
    root = Path(cfg.data.prepared_dir)
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(f"data.prepared_dir: no prepared dataset at {root} (manifest.json missing); "
                                f"run `rodpo data prepare --config <your config>` first")
    manifest = load_manifest(root)
    features = load_item_features(root, cfg.data.modalities)
    valid, test = (Contexts.from_split(load_split(root, split)) for split in ("valid", "test"))
    return Dataset(root, manifest, features, valid, test)


def make_model(cfg: Config, data: Dataset, device: torch.device) -> SASRec:
    """The model for `data`, its expert-parallel groups joined (so checkpoints can be loaded into it)."""
    modalities = {m: data.manifest.modalities[m] for m in data.features}
    model = build_model(cfg, modalities, data.features, data.manifest.num_items).to(device)
    if cfg.moe.enabled and cfg.moe.ep_size > 1:
        join_expert_groups(model)
    return model
