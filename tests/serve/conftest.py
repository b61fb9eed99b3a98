"""Trained checkpoints for the serving tests: the demo config on a tiny synthetic catalog (raw ids =
internal ids) and an ID-only model of a generic interaction file with string ids."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from rodpo_dist.cli import main
from rodpo_dist.config import Config, load_config

TINY = ["data.synthetic.num_items=150", "data.synthetic.num_users=100", "data.synthetic.num_clusters=6",
        "data.synthetic.max_seq_len=10", "model.hidden=16", "model.heads=1", "model.max_len=8",
        "pretrain.epochs=1", "eval.batch_size=16", "runtime.progress=false"]


class Run(NamedTuple):
    root: Path
    data: Path
    checkpoint: Path


def _train(root: Path, *overrides: str) -> Run:
    common = ["--config", "configs/demo.yaml", *TINY, f"data.prepared_dir={root}/data",
              f"runtime.run_dir={root}/run", *overrides]
    assert main(["data", "prepare", *common]) == 0
    assert main(["pretrain", *common]) == 0
    return Run(root, root / "data", root / "run" / "pretrain" / "best")


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    """`tiny_config(*overrides)`: the demo config at the size of `demo_run`."""
    def tiny_config(*overrides: str) -> Config:
        return load_config("configs/demo.yaml", [*TINY, *overrides])
    return tiny_config


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Run:
    """1 epoch of the demo config on 150 items x 100 users (text, image, attr modalities)."""
    return _train(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def interactions_run(tmp_path_factory) -> Run:
    """An ID-only model of 90 users x 40 items whose raw ids are strings (`sku-007`)."""
    root = tmp_path_factory.mktemp("interactions")
    rng = np.random.default_rng(0)
    rows = ["user,item,timestamp"]
    for user in range(90):
        for t, item in enumerate(rng.choice(40, size=rng.integers(4, 9), replace=False)):
            rows.append(f"user-{user},sku-{item:03d},{t}")
    (root / "events.csv").write_text("\n".join(rows) + "\n")
    return _train(root, "data.source=interactions", f"data.path={root}/events.csv", "data.modalities=[]")
