"""Probe entry point for the SLURM launch scripts (used by tests/launch/test_slurm.py).

Run as RODPO_ENTRY under launch/slurm/train_*.sbatch. Writes JSON files into $RODPO_PROBE_OUT.
  RODPO_PROBE_MODE=allreduce (default): init torch.distributed from the env (gloo), all_reduce
      rank+1, write rank<R>.json with rank, world size, hostname, MASTER_ADDR, the sum, argv.
  RODPO_PROBE_MODE=deepspeed: the same through deepspeed.init_distributed / deepspeed.comm.
  RODPO_PROBE_MODE=signal: write started-<restart>-<R>.json, sleep RODPO_PROBE_HANDLER_DELAY s,
      install a SIGUSR1 handler (as launch/train.py must), write ready-<restart>-<R>.json, wait (at most RODPO_PROBE_WAIT s); on SIGUSR1 write
      signal-<restart>-<R>.json and exit 0 (stands for "checkpoint saved").  When the job
      was requeued (SLURM_RESTART_COUNT >= 1) write resumed-<R>.json and exit at once.
"""
import json
import os
import signal
import socket
import sys
import time


def _write(name, **data):
    out = os.environ["RODPO_PROBE_OUT"]
    base = dict(
        rank=int(os.environ.get("RANK", -1)),
        world_size=int(os.environ.get("WORLD_SIZE", -1)),
        local_rank=int(os.environ.get("LOCAL_RANK", -1)),
        hostname=socket.gethostname(),
        master_addr=os.environ.get("MASTER_ADDR"),
        master_port=os.environ.get("MASTER_PORT"),
        slurm_nodeid=os.environ.get("SLURM_NODEID"),
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        restart=int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
        argv=sys.argv[1:],
        pid=os.getpid(),
    )
    base.update(data)
    tmp = os.path.join(out, f".{name}.tmp")
    with open(tmp, "w") as f:
        json.dump(base, f)
    os.replace(tmp, os.path.join(out, name))


def allreduce():
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    hosts = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    _write(f"rank{rank}.json", sum=float(t.item()), hosts=hosts)
    dist.barrier()
    dist.destroy_process_group()


def ds_allreduce():
    import deepspeed
    import deepspeed.comm as dcomm
    import torch

    deepspeed.init_distributed()
    rank = dcomm.get_rank()
    t = torch.tensor([float(rank + 1)])
    dcomm.all_reduce(t)
    _write(f"rank{rank}.json", sum=float(t.item()), backend=dcomm.get_backend() if hasattr(dcomm, "get_backend") else None)
    dcomm.barrier()
    # tear the gloo group down before exit: left to interpreter shutdown it sometimes aborts
    # ("terminate called without an active exception", SIGABRT)
    torch.distributed.destroy_process_group()


def wait_for_signal():
    rank = int(os.environ.get("RANK", 0))
    restart = int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)
    if restart >= 1:
        _write(f"resumed-{rank}.json")
        return 0
    got = []
    # A training process that is still importing when SIGUSR1 comes has no handler yet (and the
    # launcher's "ignore" is inherited): the batch script sends the signal again.
    _write(f"started-{restart}-{rank}.json", usr1_ignored=signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN)
    time.sleep(float(os.environ.get("RODPO_PROBE_HANDLER_DELAY", 0)))
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    _write(f"ready-{restart}-{rank}.json")
    deadline = time.monotonic() + float(os.environ.get("RODPO_PROBE_WAIT", 60))
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    if not got:
        _write(f"timeout-{restart}-{rank}.json")
        return 3
    _write(f"signal-{restart}-{rank}.json", signum=got[0])
    return 0


if __name__ == "__main__":
    mode = os.environ.get("RODPO_PROBE_MODE", "allreduce")
    sys.exit({"allreduce": allreduce, "deepspeed": ds_allreduce, "signal": wait_for_signal}[mode]())
