"""2 gloo ranks under each launcher and engine against 1 rank with the same global batch.

torchrun + plain, `accelerate launch` + accelerate, `deepspeed` + ZeRO-1 and ZeRO-2 (the latter
with gradient accumulation 2 x 8 per rank): the losses of every step and the final weights match
the single-process run (up to fp32 summation order through Adam).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from runs import REPO, TINY, ZERO, accelerate, deepspeed, prepare_tiny, records, torchrun, train, train_losses
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("dp") / "data")


@pytest.fixture(scope="module")
def one_rank(data_dir) -> Path:
    run = data_dir.parent / "one"
    train([sys.executable], run, data_dir, "pretrain.batch_size=32")
    return run


CASES = {
    "torchrun-plain": (torchrun, ["pretrain.batch_size=16"], {}),
    "accelerate": (accelerate, ["--engine", "accelerate", "pretrain.batch_size=16"], {"ACCELERATE_USE_CPU": "true"}),
    "deepspeed-zero1": (deepspeed, ["--engine", "deepspeed", f"runtime.deepspeed_config={ZERO.format(1)}",
                                    "pretrain.batch_size=16"], {}),
    "deepspeed-zero2-accum2": (deepspeed, ["--engine", "deepspeed", f"runtime.deepspeed_config={ZERO.format(2)}",
                                           "pretrain.batch_size=8", "pretrain.grad_accum=2"], {}),
}


def assert_same_training(two: Path, one: Path) -> None:
    """Two runs took the same steps: every step's loss and pre-clip gradient norm, and the final weights."""
    torch.testing.assert_close(train_losses(two), train_losses(one), rtol=0, atol=1e-4)
    # the pre-clip gradient norm of every step: clipping and Adam hide a constant factor (ranks' gradients
    # summed instead of averaged) from the losses and weights, not from this
    norms = [r["grad_norm"] for r in records(one, "train")]
    assert min(norms) > 1.0  # clipped at 1.0: the weights could not tell
    torch.testing.assert_close([r["grad_norm"] for r in records(two, "train")], norms, rtol=1e-4, atol=0)
    weights_one = load_file(str(one / "pretrain" / "best" / "model.safetensors"))
    weights_two = load_file(str(two / "pretrain" / "best" / "model.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    for key in weights_one:  # same samples per step, summed in another order: fp32 rounding through Adam
        a, b = weights_two[key], weights_one[key]
        if key.endswith(".attn.kv.bias"):
            # the key bias has an exactly zero gradient (softmax is shift invariant): Adam turns its
            # rounding noise into steps of up to lr, so only the value half is compared tightly
            torch.testing.assert_close(a[: len(a) // 2], b[: len(b) // 2], rtol=0, atol=1e-2, msg=key)
            a, b = a[len(a) // 2:], b[len(b) // 2:]
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4, msg=key)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_rank_with_the_same_global_batch(case, data_dir, one_rank, tmp_path):
    launcher, extra, env = CASES[case]
    train(launcher(), tmp_path / "two", data_dir, *extra, env=env)
    assert_same_training(tmp_path / "two", one_rank)
    assert (tmp_path / "two" / "pretrain" / "best" / "rank1.pt").is_file()


def test_two_ranks_equal_one_rank_with_the_sparse_item_table(data_dir, tmp_path):
    """model.sparse_item_table end to end under torchrun: each rank's row gradients gathered by row and
    averaged, then LazyAdamW, step for step as one process with the same global batch."""
    sparse = "model.sparse_item_table=true"
    train([sys.executable], tmp_path / "one", data_dir, "pretrain.batch_size=32", sparse)
    train(torchrun(), tmp_path / "two", data_dir, "pretrain.batch_size=16", sparse)
    assert_same_training(tmp_path / "two", tmp_path / "one")


def test_expert_parallel_run_trains_and_its_checkpoint_evaluates_the_same_on_one_process(data_dir, tmp_path):
    """ep_size=2: each rank holds 2 of the 4 experts; the saved checkpoint names all 4 globally."""
    from rodpo_dist.config import load_config
    from rodpo_dist.train.selection import evaluate_checkpoint

    moe = ["moe.enabled=true", "moe.backend=deepspeed", "moe.num_experts=4", "moe.ep_size=2", "moe.top_k=1",
           "moe.placement=ffn"]
    train(deepspeed(), tmp_path / "ep", data_dir, "--engine", "deepspeed", f"runtime.deepspeed_config={ZERO.format(2)}",
          "pretrain.batch_size=16", *moe)
    run = tmp_path / "ep" / "pretrain"
    losses = train_losses(tmp_path / "ep")
    assert losses[-1] < losses[0]
    weights = load_file(str(run / "best" / "model.safetensors"))
    experts = sorted({k.split("deepspeed_experts.")[1].split(".")[0] for k in weights if "deepspeed_experts." in k})
    assert experts == ["0", "1", "2", "3"]
    # each rank initialised its 2 local experts from the same seed; training on other tokens split them
    first = next(k for k in weights if "deepspeed_experts.0." in k)
    assert not torch.equal(weights[first], weights[first.replace("experts.0.", "experts.2.")])
    # the consolidated checkpoint on one process (ep_size=1) gives the metrics the 2-rank run reported
    cfg = load_config(REPO / "configs" / "demo.yaml", [*TINY, f"data.prepared_dir={data_dir}", *moe, "moe.ep_size=1"])
    single = evaluate_checkpoint(cfg, run / "best", ["test"])["test"]
    reported = json.loads((run / "report.json").read_text())["backbone (test)"]
    assert single == pytest.approx({k: reported[k] for k in single}, abs=1e-9)
