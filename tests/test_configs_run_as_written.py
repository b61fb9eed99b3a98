"""Every command in the comment lines of `configs/*.yaml` runs as written, from a clean checkout's
root, with tiny overrides appended (a small synthetic catalog, a tiny S3-Rec folder or a tiny RecBole
folder with ratings; 1 epoch)."""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import shutil
from pathlib import Path

import pytest

from rodpo_dist.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
FAST = ["model.hidden=16", "model.heads=1", "model.max_len=8", "pretrain.epochs=1", "pretrain.batch_size=32",
        "pretrain.eval_every_epochs=1", "align.epochs=1", "align.batch_size=32", "pool.k=10", "pool.refresh_steps=2",
        "align.num_negatives=2", "eval.batch_size=64", "runtime.progress=false", "study.seeds=[0]",
        "pretrain.item_chunk=64"]
SYNTHETIC = ["data.synthetic.num_items=120", "data.synthetic.num_users=80", "data.synthetic.num_clusters=6",
             "data.synthetic.max_seq_len=10"]


COMMAND = re.compile(r"^#\s*(?:[A-Z][\w ]*:\s+)?(rodpo\s.*)$")
"""A command line of the leading comment block: `# rodpo ...`, or after a label (`# Run: rodpo ...`, `# Stages
alone: rodpo ...`), continued lines indented (`#               rodpo pretrain ...`)."""


def header(config: Path) -> list[str]:
    """The leading comment block of a config."""
    return list(itertools.takewhile(lambda line: line.startswith("#"), config.read_text().splitlines()))


def commands(config: Path) -> list[list[str]]:
    """Every `rodpo ...` command of the config's leading comment block, in order."""
    return [shlex.split(m.group(1))[1:] for m in map(COMMAND.match, header(config)) if m]


def test_every_config_opens_with_the_command_that_runs_it():
    for path in CONFIGS:
        assert path.read_text().startswith("# Run: rodpo "), path
        assert commands(path), path


def test_every_command_line_of_every_config_is_parsed():
    """No line of the comment block that names a command of the CLI (`rodpo pretrain ...`) is left out (a
    label such as `Stages alone:` included), and the CLI accepts every parsed command."""
    from rodpo_dist.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = re.compile(rf"(^|[\s:])rodpo\s+({'|'.join(sub.choices)})\b")  # `rodpo <a command of the CLI>`
    for path in CONFIGS:
        named = [line for line in header(path) if names.search(line.lstrip("#"))]
        found = commands(path)
        assert len(found) == len(named), f"{path.name}: {named}"
        for argv in found:
            try:
                parser.parse_known_args(argv)
            except SystemExit:
                pytest.fail(f"{path.name}: the CLI refuses `rodpo {' '.join(argv)}`")
    demo = [" ".join(argv[:2]) for argv in commands(REPO / "configs" / "demo.yaml")]
    assert demo == ["demo --config", "data prepare", "pretrain --config", "align --config"]


def tiny_s3rec(folder: Path, name: str) -> None:
    """A small S3-Rec folder: 60 users over 40 items, attributes and item texts."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(map(str, [u, *rng.choice(np.arange(1, 41), size=rng.integers(5, 12), replace=False)]))
             for u in range(1, 61)]
    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (folder / f"{name}_item2attributes.json").write_text(json.dumps({str(i): [i % 5, 5 + i % 3] for i in range(1, 41)}))
    (folder / f"{name}_items.tsv").write_text("item_id\tasin\ttext\n" + "".join(
        f"{i}\tA{i}\tproduct number {i} of brand {i % 4}\n" for i in range(1, 41)))


def tiny_recbole(folder: Path, name: str) -> None:
    """A small RecBole folder in MovieLens' layout: 60 users rating 40 movies 1-5 with times, titles and genres
    (a config of real RecBole files, e.g. ml-100k, which may not be redistributed, runs on this instead)."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + 60 * k}"
            for u in range(1, 61) for k, i in enumerate(rng.choice(np.arange(1, 41), size=14, replace=False))]
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    (folder / f"{name}.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\tMovie number {i}\t{1990 + i % 7}\t{['Comedy', 'Drama', 'Action'][i % 3]}\n" for i in range(1, 41)))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_commands_run_as_written(config, tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    text = config.read_text()
    tiny = list(FAST)
    if "source: s3rec" in text:
        name = next(line.split(":")[1].strip() for line in text.splitlines() if line.strip().startswith("name:"))
        tiny_s3rec(tmp_path / "amazon", name)
        tiny += [f"data.path={tmp_path / 'amazon'}"]
    elif "source: recbole" in text:
        name = next(line.split(":")[1].strip() for line in text.splitlines() if line.strip().startswith("name:"))
        tiny_recbole(tmp_path / "recbole", name)
        tiny += [f"data.path={tmp_path / 'recbole'}", "data.min_user_items=3", "data.min_item_users=2"]
    else:
        tiny += SYNTHETIC
    for argv in commands(config):
        code = main([*argv, *tiny])
        assert code == 0, f"{' '.join(argv)}: {capsys.readouterr().err[-2000:]}"
