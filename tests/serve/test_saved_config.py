"""A checkpoint is evaluated, served and exported from any folder once its training inputs are gone:
its saved config's relative paths are read from the folder the run was launched in, and the data
files and the `init` checkpoint it was trained from are not required any more."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rodpo_dist.cli import main
from rodpo_dist.config import ConfigError, saved_config

REPO = Path(__file__).resolve().parents[2]
RUN = ["--config", str(REPO / "configs" / "demo.yaml"), "data.source=interactions", "data.path=shop/events.csv",
       "data.modalities=[]", "data.prepared_dir=data_cache/shop", "runtime.run_dir=runs/shop", "model.hidden=16",
       "model.heads=1", "model.max_len=8", "pretrain.epochs=1", "align.epochs=1", "eval.batch_size=16",
       "runtime.progress=false"]


def _recommend(checkpoint: Path, out: Path) -> list[dict]:
    requests = out.with_suffix(".in.jsonl")
    requests.write_text("".join(json.dumps({"user": u, "history": [f"sku-{i:03d}" for i in range(u, u + 4)]}) + "\n"
                                for u in range(5)))
    assert main(["recommend", "--checkpoint", str(checkpoint), "--input", str(requests), "--k", "5",
                 "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_a_checkpoint_serves_from_any_folder_after_its_training_inputs_are_gone(tmp_path, monkeypatch):
    launch, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (launch / "shop").mkdir(parents=True)
    elsewhere.mkdir()
    rng = np.random.default_rng(0)
    rows = [f"user-{u},sku-{i:03d},{t}" for u in range(60) for t, i in enumerate(rng.choice(30, 6, replace=False))]
    (launch / "shop" / "events.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(launch)
    assert main(["pretrain", *RUN]) == 0
    assert main(["align", *RUN, "align.strategy=random", "--init", "runs/shop/pretrain/best"]) == 0
    best = launch / "runs" / "shop" / "align-random" / "best"
    expected = _recommend(best, tmp_path / "before.jsonl")

    (launch / "shop" / "events.csv").unlink()  # the training inputs are gone: the events and the init checkpoint
    shutil.rmtree(launch / "runs" / "shop" / "pretrain")
    monkeypatch.chdir(elsewhere)  # and every relative path of the saved config misses from here
    cfg = saved_config(best)
    assert Path(cfg.data.prepared_dir) == launch / "data_cache" / "shop"
    assert cfg.data.path == "shop/events.csv"  # gone: kept as it was, and not required
    assert _recommend(best, elsewhere / "after.jsonl") == expected
    assert main(["evaluate", "--checkpoint", str(best)]) == 0
    assert main(["export", "--checkpoint", str(best), "--out", str(elsewhere / "exported")]) == 0
    # a run's own training still needs its inputs: a config naming them is refused with every one named
    with pytest.raises(ConfigError, match=r"data\.path: shop/events\.csv does not exist(.|\n)*init: checkpoint"):
        from rodpo_dist.config import load_config
        load_config(str(REPO / "configs" / "demo.yaml"), [*RUN[2:], "stage=align", "init=runs/shop/pretrain/best"])
