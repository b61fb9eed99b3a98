"""The SLURM launch scripts on a real two-node SLURM cluster (launch/slurm/local_cluster.sh).

The cluster is Debian's slurm-wlm + munge; each node is a network namespace with its own
address and hostname (n1 = 10.199.0.1, n2 = 10.199.0.2), so the two "nodes" rendezvous over
TCP like two machines.  `local_cluster.sh up` installs the packages with apt-get when they are
missing.  The jobs run the real sbatch scripts with RODPO_ENTRY=launch/slurm/_probe.py in place
of launch/train.py.  The cluster (fixture `slurm_cluster`, tests/launch/conftest.py) has its own
state dir and namespace names, so it does not disturb (or get disturbed by) one started by hand.
"""
import json
import time
from pathlib import Path
import os

import pytest

N1_ADDR = "10.199.0.1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="needs root: creates network namespaces, starts munged/slurmctld/slurmd, "
                              "may apt-get install slurm-wlm"),
]


def _done(info):
    return info.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="module")
def cluster(slurm_cluster):
    return slurm_cluster


# The three launch scripts, each through its own per-node launcher.  All three jobs are
# submitted at once (the cluster runs two at a time), then checked one by one.
SCRIPTS = {
    "torchrun": ("train_torchrun.sbatch", {}, ["--resume", "auto"]),
    "accelerate": ("train_accelerate.sbatch", {}, ["--resume", "auto", "--engine", "accelerate"]),
    # the real deepspeed.init_distributed / deepspeed.comm.all_reduce over the two nodes
    "deepspeed": ("train_deepspeed.sbatch", {"RODPO_PROBE_MODE": "deepspeed", "DS_ACCELERATOR": "cpu"},
                  ["--resume", "auto", "--engine", "deepspeed"]),
}


@pytest.fixture(scope="module")
def allreduce_jobs(cluster, tmp_path_factory):
    jobs = {}
    for name, (script, env, _) in SCRIPTS.items():
        out = tmp_path_factory.mktemp(f"slurm-{name}")
        jid, log = cluster.submit(script, out, "--config", "configs/none.yaml", "a.b=1", **env)
        jobs[name] = (jid, log, out)
    return jobs


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_two_node_allreduce(cluster, allreduce_jobs, name):
    jid, log, out = allreduce_jobs[name]
    info = cluster.wait(jid, _done, 75, "the job to finish", log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 for r in ranks)
    # one rank per node, rank 0 on the first node of the allocation
    assert [r["hostname"] for r in ranks] == ["n1", "n2"], ranks
    assert [r["slurm_nodeid"] for r in ranks] == ["0", "1"]
    assert all(r["sum"] == 3.0 for r in ranks), ranks  # all_reduce(rank + 1) over 2 ranks
    # the rendezvous is n1's own namespace address, the port derived from the job id
    assert all(r["master_addr"] == N1_ADDR for r in ranks), ranks
    assert all(r["master_port"] == str(20000 + jid % 20000) for r in ranks)
    # the entry point gets `--resume auto` (+ engine), then the sbatch arguments
    expected = SCRIPTS[name][2] + ["--config", "configs/none.yaml", "a.b=1"]
    assert all(r["argv"] == expected for r in ranks), ranks
    assert f"master {N1_ADDR}:" in text


def test_usr1_checkpoints_and_requeues(cluster, allreduce_jobs, tmp_path):
    # (depends on allreduce_jobs only so that it runs after them, on a free cluster)
    out = tmp_path
    # The probe installs its SIGUSR1 handler 3 s after it starts, and the signal comes before
    # that (as when it arrives while the training still imports): the first forwarded signal is
    # ignored, a repeated one (every 2 s here) must get through.
    jid, log = cluster.submit("train_torchrun.sbatch", out, "x=1", RODPO_PROBE_MODE="signal",
                              RODPO_PROBE_WAIT="60", RODPO_PROBE_HANDLER_DELAY="3",
                              RODPO_RESIGNAL_INTERVAL="2")
    started = [out / f"started-0-{r}.json" for r in (0, 1)]
    cluster.wait(jid, lambda i: all(p.exists() for p in started) or _done(i), 60, "both ranks started", log)
    assert all(p.exists() for p in started), log.read_text()
    # the launcher runs with SIGUSR1 ignored, the training process inherits that
    assert all(json.loads(p.read_text())["usr1_ignored"] for p in started)

    # what SLURM does before the time limit with --signal=B:USR1@N: signal the batch shell only
    cluster.run("scancel", "--signal=USR1", "--batch", str(jid))
    info = cluster.wait(jid, lambda i: int(i.get("Restarts", 0)) >= 1 or _done(i), 40, "the requeue", log)
    assert int(info["Restarts"]) == 1, (info, log.read_text())
    assert info["JobState"] in {"PENDING", "REQUEUED", "CONFIGURING", "RUNNING"}, info
    # the trap forwarded SIGUSR1 to the training processes on both nodes
    for r in (0, 1):
        sig = json.loads((out / f"signal-0-{r}.json").read_text())
        assert sig["signum"] == 10 and sig["hostname"] == f"n{r + 1}"
        assert not (out / f"timeout-0-{r}.json").exists()
    text = log.read_text()
    assert "SIGUSR1" in text and "requeueing job" in text, text

    # SLURM holds a requeued job for about 2 minutes (BeginTime): once it is back to PENDING (the
    # first run fully cleaned up on both nodes), release it now
    info = cluster.wait(jid, lambda i: i["JobState"] == "PENDING" or _done(i), 40, "PENDING after requeue", log)
    assert info["JobState"] == "PENDING", (info, log.read_text())
    # slurmd refuses a batch launch whose credential is not newer (1 s resolution) than the
    # revocation of the killed run ("Job N already killed, do not launch batch job"); SLURM's own
    # hold avoids that, and so must an early release
    time.sleep(3)
    cluster.run("scontrol", "update", f"JobId={jid}", "StartTime=now")
    info = cluster.wait(jid, _done, 60, "the requeued run to finish", log)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (
        {k: info.get(k) for k in ("JobState", "Reason", "ExitCode", "Restarts", "NodeList", "BatchHost")}, log.read_text(),
        {p.name: p.read_text()[-1500:] for p in (Path(cluster.state) / "log").glob("*.log")})
    for r in (0, 1):
        res = json.loads((out / f"resumed-{r}.json").read_text())
        assert res["restart"] == 1 and res["argv"][:2] == ["--resume", "auto"], res
    text = log.read_text()
    assert "restart 1" in text and "restart 0" in text, text  # one log across both runs


TRAIN_JOBS = {
    "torchrun": ("train_torchrun.sbatch", [], {}),
    "deepspeed": ("train_deepspeed.sbatch", ["runtime.deepspeed_config=configs/deepspeed/zero2.json"],
                  {"DS_ACCELERATOR": "cpu"}),
}


@pytest.mark.parametrize("name", list(TRAIN_JOBS))
def test_sbatch_trains_the_demo_config_on_two_nodes(cluster, allreduce_jobs, tmp_path, name):
    """The real entry point on the demo config (2 epochs): one rank per node, data prepared in the job."""
    script, extra, env = TRAIN_JOBS[name]
    run = tmp_path / "run"
    jid, log = cluster.submit(script, tmp_path, "--config", "configs/demo.yaml", "pretrain.epochs=2",
                              f"data.prepared_dir={tmp_path}/data", f"runtime.run_dir={run}",
                              "runtime.progress=false", *extra, RODPO_ENTRY="launch/train.py", **env)
    info = cluster.wait(jid, _done, 400, "the training job to finish", log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log.read_text()[-4000:]
    best = run / "pretrain" / "best"
    assert json.loads((best / "state.json").read_text())["world_size"] == 2
    assert (best / "rank0.pt").is_file() and (best / "rank1.pt").is_file()
    report = json.loads((run / "pretrain" / "report.json").read_text())
    assert report["backbone (test)"]["ndcg@10"] > 0.01  # far above chance (10 / 2000 items)
    assert f"master {N1_ADDR}:" in log.read_text()
