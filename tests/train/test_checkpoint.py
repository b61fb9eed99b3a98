import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from rodpo_dist.train.checkpoint import (CheckpointError, TrainState, load_checkpoint, resolve_resume,
                                         save_checkpoint)


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model = _model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    state = TrainState(step=7, epoch=1, batch_in_epoch=3, best_metric=0.5, extra={"k": 1})
    path = save_checkpoint(tmp_path, state, model, {"optimizer": opt.state_dict()})
    expected_draw = torch.rand(3)

    other = _model(1)
    torch.manual_seed(123)
    loaded, trainer, _ = load_checkpoint(resolve_resume(tmp_path, "auto"), other)
    assert path.name == "ckpt-00000007" and loaded == state
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert torch.equal(torch.rand(3), expected_draw)
    opt2 = torch.optim.AdamW(other.parameters(), lr=0.1)
    opt2.load_state_dict(trainer["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_keeps_only_the_newest_and_named_checkpoints(tmp_path):
    model = _model(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, TrainState(step=step), model, {}, keep=2)
    save_checkpoint(tmp_path, TrainState(step=3), model, {}, name="best")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best", "ckpt-00000002", "ckpt-00000003", "latest"]
    assert (tmp_path / "latest").read_text() == "ckpt-00000003"


def test_missing_and_incomplete_checkpoints_are_named(tmp_path):
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path, "auto") is None
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="half is incomplete"):
        resolve_resume(tmp_path, str(tmp_path / "half"))


def test_kill_during_save_leaves_the_previous_checkpoint_as_latest(tmp_path):
    """A process SIGKILLed in the middle of writing a checkpoint must not corrupt `latest`."""
    model = _model(0)
    save_checkpoint(tmp_path, TrainState(step=1), model, {})
    script = textwrap.dedent(f"""
        import os, signal, torch
        import rodpo_dist.train.checkpoint as ck
        real = ck.save_file
        def dying(weights, path):
            real(weights, path)
            os.kill(os.getpid(), signal.SIGKILL)
        ck.save_file = dying
        torch.manual_seed(5)
        ck.save_checkpoint({str(tmp_path)!r}, ck.TrainState(step=2), torch.nn.Linear(4, 3), {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    assert resolve_resume(tmp_path, "auto").name == "ckpt-00000001"
    state, _, _ = load_checkpoint(resolve_resume(tmp_path, "auto"), _model(3))
    assert state.step == 1


def test_next_save_clears_what_a_killed_save_left(tmp_path):
    (tmp_path / ".ckpt-00000009.tmp-999").mkdir(parents=True)
    save_checkpoint(tmp_path, TrainState(step=10), _model(0), {})
    assert not list(tmp_path.glob(".*.tmp*"))


class _Touch:
    """Unpickling this object calls `Path.touch(marker)`: what any code in a pickle could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


@pytest.mark.parametrize("file", ["trainer.pt", "rank0.pt"])
def test_loading_never_unpickles_arbitrary_objects(tmp_path, file):
    """A checkpoint whose .pt file holds an object with code behind it is refused, and the code never runs."""
    import pickle

    path = save_checkpoint(tmp_path / "run", TrainState(step=1), _model(0), {"optimizer": {}})
    marker = tmp_path / "code-ran"
    torch.save({"rng": {}, "optimizer": _Touch(marker)}, path / file)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(path, _model(1))
    assert not marker.exists()
    torch.load(path / file, weights_only=False)  # the payload is real: a plain unpickle runs it
    assert marker.exists()
