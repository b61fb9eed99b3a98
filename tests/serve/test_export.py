"""`rodpo export`: the folder serves in a fresh process that cannot import this package, with the
checkpoint's top-K; the card holds the checkpoint's metrics; the MoE encoder exports too."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rodpo_dist.cli import main
from rodpo_dist.config import saved_config
from rodpo_dist.data.loader import load_item_features
from rodpo_dist.data.manifest import load_manifest
from rodpo_dist.model import build_model
from rodpo_dist.serve import ItemIds, Recommender, export
from rodpo_dist.serve.export import CARD_FILE, LOADER_FILE

FRESH = """
import importlib.abc, runpy, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("rodpo_dist", "rodpo_kernels"):
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Blocked())
for name in ("rodpo_dist", "rodpo_kernels"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable")
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
assert not [m for m in sys.modules if m.partition(".")[0] in ("rodpo_dist", "rodpo_kernels")]
"""


def _histories(num_items: int) -> list[list[int]]:
    rng = np.random.default_rng(1)
    lengths = [1, 2, 5, 8, 12, *rng.integers(1, 15, size=20)]  # max_len is 8
    return [rng.choice(np.arange(1, num_items + 1), size=n, replace=False).tolist() for n in lengths]


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory):
    """`rodpo export` of the demo checkpoint."""
    out = tmp_path_factory.mktemp("exported") / "demo"
    assert main(["export", "--checkpoint", str(demo_run.checkpoint), "--out", str(out)]) == 0
    return out


def test_exported_folder_in_a_fresh_process_gives_the_checkpoints_top_k(demo_run, exported, tmp_path):
    histories = _histories(150)
    requests = "".join(json.dumps({"user": i, "history": h}) + "\n" for i, h in enumerate(histories))
    done = subprocess.run([sys.executable, "-I", "-c", FRESH, str(exported / LOADER_FILE), str(exported), "--k", "10"],
                          input=requests, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    expected = Recommender.from_checkpoint(demo_run.checkpoint).recommend(histories, 10)
    assert [r["user"] for r in results] == list(range(len(histories)))
    for r, e in zip(results, expected):
        assert r["items"] == e.items
        np.testing.assert_allclose(r["scores"], e.scores, rtol=1e-5, atol=1e-5)


def test_card_holds_the_checkpoints_metrics_and_config(demo_run, exported, capsys):
    card = json.loads((exported / CARD_FILE).read_text())
    report = json.loads((demo_run.checkpoint.parent / "report.json").read_text())
    for split in ("valid", "test"):
        assert card["metrics"][split] == pytest.approx({k: v for k, v in report[f"backbone ({split})"].items()
                                                        if not k.startswith("liked")})
    assert card["dataset"]["num_items"] == card["num_items"] == 150 and card["max_len"] == 8
    assert card["config"] == saved_config(demo_run.checkpoint).to_dict() | {"runtime": card["config"]["runtime"]}
    assert main(["export", "--checkpoint", str(demo_run.checkpoint), "--out", str(exported)]) == 1
    assert f"rodpo: error: {exported} exists and is not empty" in capsys.readouterr().err


def _standalone(folder):
    """The folder's `standalone.py`, imported from there."""
    spec = importlib.util.spec_from_file_location("exported_standalone", folder / LOADER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moe_user_encoder_exports_with_the_same_top_k(demo_run, tiny_config, tmp_path):
    manifest = load_manifest(demo_run.data)
    features = load_item_features(demo_run.data, list(manifest.modalities))
    modalities = {m: manifest.modalities[m] for m in features}

    def recommender(placement: str) -> Recommender:
        cfg = tiny_config("moe.enabled=true", "moe.num_experts=4", "moe.top_k=2", f"moe.placement={placement}")
        model = build_model(cfg, modalities, features, manifest.num_items)
        return Recommender(model, ItemIds(manifest.num_items), max_len=cfg.model.max_len, batch_size=4)

    torch.manual_seed(0)
    rec = recommender("ffn")
    exported = _standalone(export(rec, tmp_path / "moe", {"dataset": "untrained MoE"})).ExportedModel(tmp_path / "moe")
    histories = _histories(manifest.num_items)
    for e, (items, scores) in zip(rec.recommend(histories, 10), exported.recommend(histories, 10)):
        assert items == e.items
        np.testing.assert_allclose(scores, e.scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"fusion MoE .* does not trace with torch.export"):
        export(recommender("both"), tmp_path / "fusion", {})


def test_the_exported_scorer_ranks_the_whole_catalog_without_padding(demo_run, exported):
    """k = every item outside the history: each appears once, none from the history, never the padding
    row (whose score, 0 for every user, would outrank the items scored below 0)."""
    model, recommender = _standalone(exported).ExportedModel(exported), Recommender.from_checkpoint(demo_run.checkpoint)
    history = _histories(150)[3]
    k = 150 - len(history)
    items, scores = model.recommend([history], k)[0]
    assert min(scores) < 0  # else the padding row would rank last and the check below could not see it
    assert sorted(items) == sorted(set(range(1, 151)) - set(history))
    assert items == recommender.recommend([history], k)[0].items


@pytest.mark.parametrize("lines, message", [
    (['{"history": [1, 2]}', '{"history": [3, "nope"]}'], "line 2: unknown item id 'nope'"),
    (['{"history": [1, 2]}', "", '{"history": []}'], "line 3: empty history"),
    (['{"history": [1, 2]'], "line 1: malformed JSON"),
    (['{"history": [1, 2, 3]}'], "line 1: k=148 but only 147 catalog items are not in the history"),
])
def test_the_exported_script_names_the_bad_request_and_writes_nothing(exported, tmp_path, lines, message):
    k = "148" if "k=148" in message else "10"
    done = subprocess.run([sys.executable, "-I", str(exported / LOADER_FILE), str(exported), "--k", k],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.startswith(f"{LOADER_FILE}: error: {message}")  # no traceback
