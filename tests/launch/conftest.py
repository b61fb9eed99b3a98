"""Fixtures for the SLURM launch tests: a real two-node SLURM cluster (launch/slurm/local_cluster.sh).

`slurm_cluster` (session scope) brings up a cluster with its own state dir and namespace names
(so it neither disturbs nor is disturbed by one started by hand) and tears it down at the end.
It needs root; `local_cluster.sh up` apt-get installs slurm-wlm + munge when they are missing.

    def test_x(slurm_cluster, tmp_path):
        jid, log = slurm_cluster.submit("train_torchrun.sbatch", tmp_path, "--config", "configs/demo.yaml",
                                        RODPO_ENTRY="launch/train.py")
        info = slurm_cluster.wait(jid, job_done, 300, "the job to finish", log)
        assert info["JobState"] == "COMPLETED", log.read_text()
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
PROBE = "launch/slurm/_probe.py"
NOT_ROOT = not hasattr(os, "geteuid") or os.geteuid() != 0
NOT_ROOT_REASON = ("needs root: creates network namespaces, starts munged/slurmctld/slurmd, "
                   "may apt-get install slurm-wlm")

TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def job_done(info):
    return info.get("JobState") in TERMINAL_STATES


def _venv():
    # the jobs use the interpreter that runs the tests
    return sys.prefix if sys.prefix != sys.base_prefix else "none"


class Cluster:
    def __init__(self, env, state):
        self.env = env
        self.state = state

    def run(self, *args, timeout=30, check=True, extra_env=None):
        env = dict(self.env, **(extra_env or {}))
        p = subprocess.run(["bash", str(CLUSTER), "exec", *args], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def job(self, jid):
        out = self.run("scontrol", "show", "job", "-o", str(jid)).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def wait(self, jid, pred, timeout, what, log=None):
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(jid)
            if pred(info):
                return info
            if time.monotonic() > deadline:
                text = Path(log).read_text() if log and Path(log).exists() else "(no log)"
                raise AssertionError(f"job {jid}: timed out after {timeout}s waiting for {what}; "
                                     f"JobState={info.get('JobState')} Reason={info.get('Reason')}\n"
                                     f"--- job log ---\n{text[-4000:]}")
            time.sleep(0.5)

    def submit(self, script, out_dir, *args, **env):
        """sbatch launch/slurm/SCRIPT ARGS with env; the log goes to OUT_DIR/slurm-<id>.out."""
        jenv = {"RODPO_ENTRY": PROBE, "RODPO_PROBE_OUT": str(out_dir), "RODPO_VENV": _venv(), **env}
        p = self.run("sbatch", "--parsable", "-o", f"{out_dir}/slurm-%j.out",
                     f"launch/slurm/{script}", *args, extra_env=jenv)
        jid = int(p.stdout.strip().split(";")[0])
        return jid, Path(out_dir) / f"slurm-{jid}.out"


@pytest.fixture(scope="session")
def slurm_cluster():
    if NOT_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    state = tempfile.mkdtemp(prefix="rodpo-slurm-t", dir="/tmp")
    ns = f"rodpo-t{os.getpid()}"
    env = dict(os.environ, RODPO_SLURM_DIR=state, RODPO_SLURM_NS=ns)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    try:
        up = subprocess.run(["bash", str(CLUSTER), "up"], env=env, capture_output=True, text=True,
                            timeout=600)  # includes apt-get install on a fresh machine
        assert up.returncode == 0, f"local_cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
        again = subprocess.run(["bash", str(CLUSTER), "up"], env=env, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 0 and "already up" in again.stderr, again.stderr
        yield Cluster(env, state)
    finally:
        down = subprocess.run(["bash", str(CLUSTER), "down"], env=env, capture_output=True, text=True,
                              timeout=120)
        left = [n for n in os.listdir("/run/netns") if n.startswith(ns + "-")] if os.path.isdir("/run/netns") else []
        shutil.rmtree(state, ignore_errors=True)
        assert down.returncode == 0 and not left, f"down failed: {down.stderr} (namespaces left: {left})"


