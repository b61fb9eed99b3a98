"""Run identity: a run folder belongs to one resolved config.

`config.yaml` (the resolved config) and `run.json` (its hash, see `config.identity`) are written
when a run starts. Resuming checks that the new config has the same identity and otherwise stops
with the differing keys; starting afresh in a folder that already holds a run stops unless
`overwrite` is given, so nothing is appended to another run's logs or reported under settings it
did not use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rodpo_dist.config import CONFIG_FILE, Config, config_hash, differing_keys, read_yaml, save_config
from rodpo_dist.runtime import Runtime
from rodpo_dist.train.checkpoint import resolve_resume

IDENTITY_FILE = "run.json"


class RunDirError(ValueError):
    """The run folder holds another run, or a config that differs from the one asked for."""


def run_folder(cfg: Config) -> Path:
    """`<runtime.run_dir>/<runtime.run_name>`; the name defaults to `pretrain`, `align-<strategy>`, or
    `align-<strategy>-<rejected>` when observed rejections take the rejected slots (`align.rejected`)."""
    a = cfg.align
    rejected = f"-{a.rejected}" if a.rejected != "pool" and a.strategy != "ce" else ""
    name = cfg.runtime.run_name or ("pretrain" if cfg.stage == "pretrain" else f"align-{a.strategy}{rejected}")
    return Path(cfg.runtime.run_dir) / name


def _differences(saved: Path, cfg: Config) -> str:
    diff = differing_keys(read_yaml(saved), cfg.to_dict())
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))


def open_run(run_dir: Path, cfg: Config, resume: str | None, overwrite: bool, rt: Runtime) -> Path | None:
    """Check `run_dir` against `cfg` and return the checkpoint to resume from (None: start afresh).

    A collective with several ranks (rank 0 clears the folder with `overwrite`, then writes the identity).
    """
    holds_run = run_dir.is_dir() and any(run_dir.iterdir())
    if resume is not None and (run_dir / CONFIG_FILE).is_file():
        diff = _differences(run_dir / CONFIG_FILE, cfg)
        if diff:
            raise RunDirError(f"{run_dir} holds a run with another config; refusing to resume it with this "
                              f"one. Differing keys: {diff}. Use another runtime.run_dir (or run_name), or "
                              f"start afresh with --overwrite")
    start = resolve_resume(run_dir, resume)
    if start is None and holds_run and resume is None and not overwrite:
        raise RunDirError(f"{run_dir} already holds a run; pass --resume auto to continue it, --overwrite to "
                          f"replace it, or choose another runtime.run_dir")
    rt.barrier()  # every rank has checked the folder as it was before rank 0 writes to it
    if rt.is_main:
        if start is None and holds_run:  # replaced, or the same run killed before its first checkpoint
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
        (run_dir / IDENTITY_FILE).write_text(json.dumps({"config_hash": config_hash(cfg)}, indent=1) + "\n")
    rt.barrier()
    return start
