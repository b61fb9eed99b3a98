"""Shared by the launch tests: a tiny demo-config run started through a real launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = ["data.synthetic.num_items=200", "data.synthetic.num_users=145", "data.synthetic.num_clusters=8",
        "data.synthetic.max_seq_len=12", "data.users_per_shard=40", "data.shuffle_buffer=1", "model.hidden=16",
        "model.heads=1", "model.max_len=10", "model.dropout=0.0", "data.length_window=1", "pretrain.epochs=2", "pretrain.warmup_steps=2",
        "pretrain.item_chunk=64", "runtime.progress=false", "runtime.log_every=1"]
ZERO = str(REPO / "configs" / "deepspeed" / "zero{}.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port())]


def accelerate() -> list[str]:
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def deepspeed() -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]


def command(launcher: list[str], run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [*launcher, str(REPO / "launch" / "train.py"), "--config", str(REPO / "configs" / "demo.yaml"),
            *TINY, f"data.prepared_dir={data_dir}", f"runtime.run_dir={run_dir}", *extra]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    return os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"} | (extra or {})


def train(launcher: list[str], run_dir: Path, data_dir: Path, *extra: str,
          env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(command(launcher, run_dir, data_dir, *extra), cwd=REPO, env=environment(env),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def records(run_dir: Path, kind: str, stage: str = "pretrain") -> list[dict]:
    path = run_dir / stage / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def train_losses(run_dir: Path, stage: str = "pretrain") -> list[float]:
    return [r["loss"] for r in records(run_dir, "train", stage)]


def prepare_tiny(out: Path) -> Path:
    from rodpo_dist.config import load_config
    from rodpo_dist.data.prepare import prepare

    cfg = load_config(REPO / "configs" / "demo.yaml", [*TINY, f"data.prepared_dir={out}"])
    prepare(cfg.data, out, progress=False)
    return out
