"""`rodpo export`: a trained model as a folder that serves with torch and safetensors only.

Folder contents:
- `user_encoder.pt2`: a `torch.export` program, left-padded internal item ids [B, L <= max_len]
  (int64, 0 = padding) -> user states [B, d] (the state at the last position; B and L dynamic).
  It holds the item encoder too (with its feature tables), so any history encodes as in training.
- `items.safetensors`: `items` [N+1, d] fp32, row i = item i, row 0 = padding (zeros).
  Scores are `states @ items.T`, row 0 and the history excluded.
- `id_map.json`: `{"items": [raw id of item 1, ..., raw id of item N]}`.
- `card.json`: dataset, the checkpoint's validation and test metrics, `max_len`, the full config.
- `standalone.py`: a loader and JSON-lines scorer needing neither this package nor its kernels.

The program and table are CPU tensors (`runtime.device=cpu` is forced while exporting). The MoE
feed-forward blocks (`moe.placement: ffn`, `moe.backend: torch`) export, their routing traced with
data-dependent shapes; a fusion MoE and the DeepSpeed backend do not (a clear error).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from rodpo_dist.config import Config, saved_config
from rodpo_dist.data.contexts import Contexts
from rodpo_dist.data.loader import load_split
from rodpo_dist.data.manifest import load_manifest
from rodpo_dist.eval.evaluate import evaluate
from rodpo_dist.model.moe import SparseMoE
from rodpo_dist.serve import standalone
from rodpo_dist.serve.recommender import Recommender

PROGRAM_FILE = "user_encoder.pt2"
ITEMS_FILE = "items.safetensors"
ID_MAP_FILE = "id_map.json"
CARD_FILE = "card.json"
LOADER_FILE = "standalone.py"


class UserEncoder(torch.nn.Module):
    """seq [B, L] -> the model's user states [B, d] (what the program computes)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.model(seq).hidden[:, -1]


def export_program(model: torch.nn.Module, max_len: int) -> torch.export.ExportedProgram:
    """`torch.export` of the user encoder with a dynamic batch and history length (1..max_len)."""
    if any(isinstance(m, SparseMoE) and m.backend != "torch" for m in model.modules()):
        raise ValueError("export needs moe.backend: torch (the DeepSpeed MoE layer does not export)")
    if model.item_encoder.fusion_moe is not None:
        raise ValueError("export: a fusion MoE (moe.placement: fusion or both) does not trace with torch.export "
                         "(SparseMoE.forward branches on its token count, there the number of non-padding items, "
                         "a data-dependent size); moe.placement: ffn exports")
    device = next(model.parameters()).device
    example = torch.ones(2, max_len, dtype=torch.long, device=device)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("length", min=1, max=max_len)}
    groups, model.length_groups = model.length_groups, 1  # grouping by length is data-dependent: one padded pass
    try:
        with warnings.catch_warnings():  # SparseMoE.last_expert_load is bookkeeping, not part of the program
            warnings.filterwarnings("ignore", message=".*were assigned during export")
            return torch.export.export(UserEncoder(model).eval(), (example,), dynamic_shapes=(dims,))
    finally:
        model.length_groups = groups


def export(recommender: Recommender, out_dir: str | Path, card: dict[str, Any]) -> Path:
    """Write the folder (see the module docstring) for `recommender`'s model; `card` goes into card.json."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; export into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        torch.export.save(export_program(recommender.model, recommender.max_len), tmp / PROGRAM_FILE)
        save_file({"items": recommender.item_table.float().cpu().contiguous()}, str(tmp / ITEMS_FILE))
        (tmp / ID_MAP_FILE).write_text(json.dumps({"items": recommender.item_ids.all_raw()}))
        card = {**card, "max_len": recommender.max_len, "hidden": recommender.item_table.shape[1],
                "num_items": recommender.item_ids.num_items, "torch": torch.__version__}
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=1))
        shutil.copyfile(standalone.__file__, tmp / LOADER_FILE)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, config: Config | None = None) -> dict[str, Any]:
    """Export checkpoint `checkpoint` (its saved config unless `config`); returns the card.

    The card's metrics are the checkpoint's full-ranking validation and test metrics, computed here.
    """
    cfg = config or saved_config(checkpoint)
    cfg = replace(cfg, runtime=replace(cfg.runtime, device="cpu"))
    recommender = Recommender.from_checkpoint(checkpoint, cfg)
    root = Path(cfg.data.prepared_dir)
    manifest = load_manifest(root)
    metrics = {split: evaluate(recommender.model, recommender.item_table, Contexts.from_split(load_split(root, split)),
                               ks=cfg.eval.ks, max_len=cfg.model.max_len, batch_size=cfg.eval.batch_size,
                               rt=recommender.rt)[0]
               for split in ("valid", "test")}
    card = {"dataset": {"name": manifest.name, "source": manifest.source["type"], "num_users": manifest.num_users,
                        "num_items": manifest.num_items, "prepared_dir": str(root)},
            "checkpoint": str(checkpoint), "metrics": metrics, "config": cfg.to_dict()}
    export(recommender, out_dir, card)
    return card
