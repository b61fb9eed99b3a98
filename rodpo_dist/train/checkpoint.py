"""Atomic checkpoints that never unpickle arbitrary objects.

A checkpoint is a folder `ckpt-<step>/` holding `model.safetensors`, `trainer.pt` (optimizer,
scheduler and RNG states: tensors and plain containers only, loaded with `weights_only=True`) and
`state.json` (step, data position, metrics). It is written under a temporary name and renamed
into place, and `latest` is replaced atomically afterwards, so a kill during a save leaves the
previous checkpoint as the one `--resume auto` finds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

LATEST = "latest"
STATE = "state.json"


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing or incomplete; the message names the path."""


@dataclass
class TrainState:
    """Where a run stands: enough, with the weights and optimizer, to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float = float("-inf")
    best_step: int = -1
    bad_evals: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, state: TrainState, model: torch.nn.Module,
                    trainer: dict[str, Any], keep: int = 2, name: str | None = None) -> Path:
    """Write `run_dir/ckpt-<step>` (or `run_dir/<name>`) atomically and point `latest` at it.

    `trainer` holds optimizer/scheduler state dicts and anything else made of tensors and plain
    containers. Only the newest `keep` step checkpoints are kept (named ones are never pruned).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / (name or f"ckpt-{state.step:08d}")
    for stale in run_dir.glob(".*.tmp-*"):  # left by a process killed while saving
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    tmp = run_dir / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({**trainer, "rng": rng_state()}, tmp / "trainer.pt")
    (tmp / STATE).write_text(json.dumps(state.__dict__, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    if name is None:
        pointer = run_dir / f".{LATEST}.tmp-{os.getpid()}"
        pointer.write_text(final.name)
        os.replace(pointer, run_dir / LATEST)
        _prune(run_dir, keep)
    _fsync_dir(run_dir)
    return final


def _prune(run_dir: Path, keep: int) -> None:
    for old in sorted(run_dir.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _complete(path: Path) -> bool:
    return (path / STATE).is_file() and (path / "model.safetensors").is_file() and (path / "trainer.pt").is_file()


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """`None` -> no resume; `auto` -> the latest complete checkpoint in run_dir (or None); else a path."""
    if resume is None:
        return None
    run_dir = Path(run_dir)
    if resume == "auto":
        pointer = run_dir / LATEST
        if pointer.is_file() and _complete(run_dir / pointer.read_text().strip()):
            return run_dir / pointer.read_text().strip()
        candidates = [p for p in sorted(run_dir.glob("ckpt-*"), reverse=True) if _complete(p)]
        return candidates[0] if candidates else None
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not _complete(path):
        raise CheckpointError(f"checkpoint {path} is incomplete: it needs model.safetensors, trainer.pt and {STATE}")
    return path


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load only the model weights of checkpoint `path` (strict: names and shapes must match)."""
    file = Path(path) / "model.safetensors"
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no model.safetensors")
    missing, unexpected = load_model(model, str(file), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit the model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]} (was it trained with another model config?)")


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> tuple[TrainState, dict[str, Any]]:
    """Load weights into `model`; return the train state and the trainer dict (RNG already restored)."""
    path = Path(path)
    if not _complete(path):
        raise CheckpointError(f"checkpoint {path} is missing or incomplete")
    load_weights(path, model)
    trainer = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu")
    set_rng_state(trainer.pop("rng"))
    state = TrainState(**json.loads((path / STATE).read_text()))
    return state, trainer
