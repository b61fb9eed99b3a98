"""Atomic checkpoints that never unpickle arbitrary objects.

A checkpoint is a folder `ckpt-<step>/` holding `model.safetensors` (every expert under its
global index, whatever the expert parallelism), `trainer.pt` (optimizer and scheduler states shared
by all ranks), `rank<r>.pt` (what rank r keeps for itself: its RNG states and, under DeepSpeed, its
ZeRO optimizer partition) and `state.json` (step, data position, metrics, world size). The `.pt`
files hold tensors and plain containers only and load with `weights_only=True`. All ranks write
into one temporary folder that rank 0 renames into place once every file is synced, then
`latest` is replaced atomically, so a kill during a save leaves the previous checkpoint as the
one `--resume auto` finds.
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
from safetensors.torch import save_file

from rodpo_dist.model.expert_parallel import full_state_dict
from rodpo_dist.model.weights import CheckpointError, load_weights
from rodpo_dist.runtime import Runtime

LATEST = "latest"
STATE = "state.json"


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


def _fsync_files(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def _clean_up_killed_saves(run_dir: Path) -> None:
    """Remove what a process killed while saving left; restore a named checkpoint set aside."""
    for stale in run_dir.glob(".*.tmp*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    for old in run_dir.glob(".*.old"):
        final = run_dir / old.name[1:-len(".old")]
        if final.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, final)


def save_checkpoint(run_dir: str | Path, state: TrainState, model: torch.nn.Module, trainer: dict[str, Any],
                    keep: int = 2, name: str | None = None, rank_trainer: dict[str, Any] | None = None,
                    rt: Runtime | None = None, files: dict[str, str] | None = None) -> Path:
    """Write `run_dir/ckpt-<step>` (or `run_dir/<name>`) atomically and point `latest` at it.

    Collective: every rank calls it (with its own `rank_trainer`); rank 0 writes the shared files.
    `trainer` holds optimizer/scheduler state dicts and anything else made of tensors and plain
    containers; `files` are text files (name -> content) written beside them, e.g. the run's config.
    Only the newest `keep` step checkpoints are kept (named ones are never pruned).
    """
    rt = rt or Runtime(torch.device("cpu"))
    run_dir = Path(run_dir)
    final = run_dir / (name or f"ckpt-{state.step:08d}")
    tmp = run_dir / f".{final.name}.tmp"
    weights = full_state_dict(model)  # a collective under expert parallelism
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _clean_up_killed_saves(run_dir)
        tmp.mkdir()
    rt.barrier()
    own = tmp / f"rank{rt.rank}.pt"
    torch.save({**(rank_trainer or {}), "rng": rng_state()}, own)
    with open(own, "rb") as fh:  # synced by its writer: ranks may sit on other nodes
        os.fsync(fh.fileno())
    rt.barrier()
    if rt.is_main:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        torch.save(trainer, tmp / "trainer.pt")
        (tmp / STATE).write_text(json.dumps({**state.__dict__, "world_size": rt.world_size}, indent=1))
        for file, text in (files or {}).items():
            (tmp / file).write_text(text)
        _fsync_files(tmp)
        old = run_dir / f".{final.name}.old"
        if final.exists():  # a named checkpoint (`best`) is replaced: set aside, swap in, delete
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        if name is None:
            pointer = run_dir / f".{LATEST}.tmp"
            pointer.write_text(final.name)
            os.replace(pointer, run_dir / LATEST)
            _prune(run_dir, keep)
        _fsync_dir(run_dir)
    rt.barrier()
    return final


def _prune(run_dir: Path, keep: int) -> None:
    for old in sorted(run_dir.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _saved_world_size(path: Path) -> int | None:
    """Ranks that saved `path`; None for a checkpoint of the single-file layout (RNG in trainer.pt)."""
    return json.loads((path / STATE).read_text()).get("world_size")


def _complete(path: Path) -> bool:
    if not all((path / f).is_file() for f in (STATE, "model.safetensors", "trainer.pt")):
        return False
    return all((path / f"rank{r}.pt").is_file() for r in range(_saved_world_size(path) or 0))


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
        raise CheckpointError(f"checkpoint {path} is incomplete: it needs model.safetensors, trainer.pt, "
                              f"{STATE} and one rank<r>.pt per rank")
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module,
                    rt: Runtime | None = None) -> tuple[TrainState, dict[str, Any], dict[str, Any]]:
    """Load weights into `model`; return the train state, the shared and this rank's trainer dicts.

    This rank's RNG states are restored. A run resumed on another number of ranks gets rank 0's RNG
    states and no per-rank state (an engine that needs its own partition then says so).
    """
    rt = rt or Runtime(torch.device("cpu"))
    path = Path(path)
    if not _complete(path):
        raise CheckpointError(f"checkpoint {path} is missing or incomplete")
    load_weights(path, model)
    trainer = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu")
    saved_world = _saved_world_size(path)
    same_world = saved_world == rt.world_size
    if saved_world is None:  # the single-file layout of earlier versions
        rank_trainer = {"rng": trainer.pop("rng")}
    else:
        rank_trainer = torch.load(path / f"rank{rt.rank if same_world else 0}.pt", weights_only=True,
                                  map_location="cpu")
    set_rng_state(rank_trainer.pop("rng"))
    fields = json.loads((path / STATE).read_text())
    fields.pop("world_size", None)
    return TrainState(**fields), trainer, rank_trainer if same_world else {}
