"""Fault tolerance of real launched jobs (2 gloo ranks under torchrun unless said otherwise).

- SIGTERM (what SLURM sends to every process at preemption / the time limit), or SIGUSR1 reaching a
  single rank, leaves a checkpoint at the step reached, the job exits 0, and `--resume auto`
  finishes with the same metrics and weights as an uninterrupted run.
- A rank killed with SIGKILL ends the whole job with an error within seconds, whether its peer is
  on the same node (torchrun notices the dead worker) or on another node (the survivor's
  collectives fail when the connection drops), far sooner than `runtime.dist_timeout_s`.
- SIGKILL in the middle of writing a checkpoint leaves the previous one as `latest`, and the run
  resumes from it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runs import REPO, ZERO, command, environment, free_port, prepare_tiny, records, torchrun, train, train_losses
from safetensors.torch import load_file

from rodpo_dist.train.checkpoint import resolve_resume

pytestmark = pytest.mark.slow
SAVE_EVERY_STEP = ["pretrain.batch_size=16", "pretrain.epochs=20", "pretrain.patience=100",
                   "runtime.checkpoint_every=1", "runtime.keep_checkpoints=3"]
LONG = ["pretrain.batch_size=16", "pretrain.epochs=12", "pretrain.patience=100", "runtime.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("faults") / "data")


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {what}: rc {proc.returncode}\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def workers(agent: subprocess.Popen) -> list[int]:
    """The training processes torchrun started (children of the agent)."""
    out = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in out.split())


def kill(job: subprocess.Popen) -> None:
    """SIGKILL a job: its workers (torchrun puts them in sessions of their own) and the agent's group."""
    for pid in workers(job):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    job.wait()


def finish(job: subprocess.Popen, timeout: float, what: str) -> int:
    """The job's exit status; a job still running after `timeout` s is killed and the test fails."""
    try:
        return job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(job)
        pytest.fail(f"{what}: the job was still running {timeout} s later")


@pytest.fixture(scope="module")
def backbone(data_dir) -> Path:
    run = data_dir.parent / "backbone"
    train([sys.executable], run, data_dir, "pretrain.batch_size=16")
    return run / "pretrain" / "best"


ALIGN = ["stage=align", "align.batch_size=16", "align.epochs=6", "pool.k=10", "pool.refresh_steps=4"]
CASES = {  # stage folder, arguments, the signal, and the ranks it reaches
    # SIGUSR1 (SLURM's --signal before the time limit) reaching rank 1 alone: every rank must stop at one step
    "pretrain-plain-usr1-rank1": ("pretrain", LONG, signal.SIGUSR1, [1]),
    # ZeRO-2 partitions and bf16 weights: each rank saves and reloads its own optimizer shard
    "pretrain-deepspeed-zero2-bf16": ("pretrain", [*LONG, "--engine", "deepspeed",
                                                   f"runtime.deepspeed_config={ZERO.format(2)}", "pretrain.bf16=true"],
                                      signal.SIGTERM, [0, 1]),
    # the candidate pool, and each rank's own negative-sampling stream
    "align-rodpo-plain": ("align-rodpo", [*ALIGN, "runtime.checkpoint_every=1000"], signal.SIGTERM, [0, 1]),
}


def rank_of(pid: int) -> int:
    """The RANK a launcher gave worker `pid` (from its environment)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in env if v.startswith(b"RANK=")).split(b"=")[1])


@pytest.mark.parametrize("case", list(CASES))
def test_a_signal_checkpoints_and_resume_equals_an_uninterrupted_run(data_dir, backbone, tmp_path, case):
    stage, extra, signum, ranks = CASES[case]
    run, extra = tmp_path / "preempted", [*extra, f"init={backbone}"]
    job = start(command(torchrun(), run, data_dir, *extra))
    wait_for(lambda: len(records(run, "train", stage)) >= 15, 120, "step 15", job)
    pids = {rank_of(pid): pid for pid in workers(job)}
    assert sorted(pids) == [0, 1]
    for rank in ranks:  # SIGTERM: SLURM signals every process of the step; SIGUSR1 here reaches one rank
        os.kill(pids[rank], signum)
    assert finish(job, 60, f"signal {signum} to rank(s) {ranks}") == 0, job.stdout.read()[-3000:]
    [event] = [r for r in records(run, "event", stage) if r.get("preempted")]
    latest = resolve_resume(run / stage, "auto")
    assert json.loads((latest / "state.json").read_text())["step"] == event["step"]
    assert not (run / stage / "report.json").exists()

    train(torchrun(), run, data_dir, *extra, "--resume", "auto")
    train(torchrun(), tmp_path / "straight", data_dir, *extra)
    resumed = json.loads((run / stage / "report.json").read_text())
    straight = json.loads((tmp_path / "straight" / stage / "report.json").read_text())
    assert resumed.keys() == straight.keys()
    for split in straight:
        assert resumed[split] == pytest.approx(straight[split], abs=1e-6), split
    assert train_losses(run, stage) == pytest.approx(train_losses(tmp_path / "straight", stage), abs=1e-6)
    a = load_file(str(run / stage / "best" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / stage / "best" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


ENDS_WITHIN_S = 10
"""A dead rank ends the job "within seconds" (README), far sooner than `runtime.dist_timeout_s` (60 here)."""


@pytest.mark.parametrize("peer", ["same node", "other node"])
def test_a_killed_rank_ends_the_job_with_an_error_within_seconds(data_dir, tmp_path, peer):
    run, timeout = tmp_path / "run", ["runtime.dist_timeout_s=60", *LONG, "pretrain.epochs=1000"]
    if peer == "same node":
        jobs = [start(command(torchrun(), run, data_dir, *timeout))]
        wait_for(lambda: len(records(run, "train")) >= 5, 120, "step 5", jobs[0])
        os.kill(workers(jobs[0])[1], signal.SIGKILL)
        survivors = jobs
    else:  # two single-process "nodes" joined by a static rendezvous; node 1 dies as a whole
        port = free_port()
        jobs = [start(command([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                               str(r), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                               "--master_port", str(port)], run, data_dir, *timeout)) for r in (0, 1)]
        wait_for(lambda: len(records(run, "train")) >= 5, 120, "step 5", jobs[0])
        for pid in [*workers(jobs[1]), jobs[1].pid]:  # torchrun puts its workers in their own sessions
            os.kill(pid, signal.SIGKILL)
        survivors = jobs[:1]
    tic = time.monotonic()
    for job in survivors:
        assert finish(job, ENDS_WITHIN_S, "a rank was killed") != 0
    elapsed = time.monotonic() - tic
    assert elapsed < ENDS_WITHIN_S
    print(f"{peer}: the job ended {elapsed:.1f} s after the kill")


def test_kill_during_a_save_keeps_the_previous_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    ckpt_dir = run / "pretrain"
    for attempt in range(5):  # until the kill lands while a checkpoint is being written
        job = start(command([sys.executable], run, data_dir, *SAVE_EVERY_STEP))
        wait_for(lambda: len(list(ckpt_dir.glob("ckpt-*"))) >= 2 and any(ckpt_dir.glob(".ckpt-*.tmp")),
                 120, "a checkpoint being written", job)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        if any(ckpt_dir.glob(".ckpt-*.tmp")):
            break
    else:
        pytest.fail("no kill landed during a save in 5 attempts")
    latest = resolve_resume(ckpt_dir, "auto")
    step = json.loads((latest / "state.json").read_text())["step"]
    assert (ckpt_dir / "latest").read_text() == latest.name
    train([sys.executable], run, data_dir, *SAVE_EVERY_STEP, "--resume", "auto")
    resumed = [r for r in records(run, "event") if "resumed_from" in r]
    assert resumed[-1]["resumed_from"] == str(latest) and resumed[-1]["step"] == step
    assert not any(ckpt_dir.glob(".*.tmp*"))
    assert (ckpt_dir / "report.json").is_file()
