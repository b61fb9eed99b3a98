"""Study records: one JSON record per (dataset, variant, method, seed) run, and its per-user ranks.

A record holds the metrics of the run's selected checkpoint, its false-negative rates (synthetic
data), wall time, command, config hash and hyper-parameters. The per-user target ranks of valid
and test are copied next to the records (`ranks/<dataset>/<variant>/<method>_s<seed>.npz`, int16,
-1 past the scored list), so paired statistics can be recomputed from the committed files alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rodpo_dist.config import Config, config_hash
from rodpo_dist.eval.metrics import MISS

RECORDS_FILE = "records.json"
SPLITS = ("valid", "test")


def dataset_name(cfg: Config) -> str:
    return cfg.data.name or cfg.data.source


def variant_name(cfg: Config) -> str:
    """The variant: its item parts (id + modalities), the MoE placement when it has one, the
    pretraining loss when it is not the full softmax (`sampled8`: 8 sampled negatives), and
    `dpo_only` when alignment drops the CE anchor (`align.ce_weight` 0; the `ce` control keeps it)."""
    parts = (["id"] if cfg.model.use_id_embedding else []) + list(cfg.data.modalities)
    if cfg.moe.enabled:
        parts.append(f"moe({cfg.moe.placement})")
    if cfg.pretrain.loss == "sampled":
        parts.append(f"sampled{cfg.pretrain.num_sampled}")
    if cfg.align.ce_weight == 0:
        parts.append("dpo_only")
    return "+".join(parts)


def record_key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    return record["dataset"], record["variant"], record["method"], record["seed"]


def ranks_path(record: dict[str, Any], last: bool = False) -> str:
    """`last`: the ranks of the weights the run ended with (kept for datasets with observed rejections)."""
    return f"ranks/{record['dataset']}/{record['variant']}/{record['method']}_s{record['seed']}{'_last' * last}.npz"


def make_record(cfg: Config, method: str, result: dict[str, dict[str, float]], final: dict[str, Any],
                seconds: float, command: str, run_dir: Path, catalog: dict[str, int]) -> dict[str, Any]:
    """One run's record; `catalog` (num_users, num_items, num_interactions) says the scale of the row."""
    sections = ("model", "moe", "pretrain") if method == "backbone" else ("model", "moe", "align", "pool")
    return {"dataset": dataset_name(cfg), "variant": variant_name(cfg), "method": method, "seed": cfg.runtime.seed,
            **catalog,
            "valid": result["valid"], "test": result["test"],
            **{f"{split}_last": result[f"{split}_last"] for split in SPLITS if f"{split}_last" in result},
            "false_negatives": {k: v for k, v in final.items()
                                if "false_negative" in k or "held_out" in k or k in ("negatives_checked", "observed_negative_share")},
            "wall_time_s": round(seconds, 1), "command": command, "run_dir": str(run_dir),
            "config_hash": config_hash(cfg), "selection_metric": cfg.eval.metric,
            "hyperparameters": {s: dataclasses.asdict(getattr(cfg, s)) for s in sections}}


def copy_ranks(run_dir: Path, out: Path, record: dict[str, Any]) -> None:
    """The run's `ranks.npz` as compact int16 (-1 = past the scored list) under `out` (and its
    `ranks_last.npz` and `dislikes.npz` when it has them)."""
    if (run_dir / "ranks_last.npz").is_file():
        _copy_ranks_file(run_dir / "ranks_last.npz", out / ranks_path(record, last=True))
    _copy_ranks_file(run_dir / "ranks.npz", out / ranks_path(record))
    dislikes = run_dir / "dislikes.npz"  # per-user dislike rates (datasets with observed rejections)
    if dislikes.is_file():
        with np.load(dislikes) as z:
            np.savez_compressed(out / dislikes_path(record), **{k: z[k] for k in z.files})


def _copy_ranks_file(source: Path, path: Path) -> None:
    with np.load(source) as z:
        arrays = {}
        for split in SPLITS:
            r = z[f"{split}_ranks"]
            arrays[f"{split}_users"] = z[f"{split}_users"].astype(np.int32)
            arrays[f"{split}_ranks"] = np.where(r == MISS, -1, r).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def dislikes_path(record: dict[str, Any]) -> str:
    return ranks_path(record).removesuffix(".npz") + "_dislikes.npz"


def load_dislikes(out: Path, record: dict[str, Any], split: str,
                  last: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """(users, per-user dislike rates) of a record's split (`last`: of the weights it ended with), None
    when the run has none."""
    path = out / dislikes_path(record)
    if not path.is_file():
        return None
    prefix = "last_" * last
    with np.load(path) as z:
        if f"{prefix}{split}_users" not in z.files:
            return None
        return z[f"{prefix}{split}_users"], z[f"{prefix}{split}_rates"].astype(np.float64)


def load_ranks_last(out: Path, record: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(users, ranks) of the weights the run ended with, None when not kept."""
    path = out / ranks_path(record, last=True)
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z[f"{split}_users"], z[f"{split}_ranks"].astype(np.int64)


def load_ranks(out: Path, record: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, 0-based ranks with -1 past the list) of a record's split."""
    with np.load(out / ranks_path(record)) as z:
        return z[f"{split}_users"], z[f"{split}_ranks"].astype(np.int64)


def load_records(out: Path) -> list[dict[str, Any]]:
    path = out / RECORDS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def save_records(out: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge `new` into `<out>/records.json` (a record with the same key is replaced); returns all."""
    merged = {record_key(r): r for r in load_records(out)} | {record_key(r): r for r in new}
    records = sorted(merged.values(), key=record_key)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RECORDS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(out / RECORDS_FILE)  # atomic: a study running beside this one never reads half a file
    return records
