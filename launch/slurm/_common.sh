# Shared by launch/slurm/train_{torchrun,accelerate,deepspeed}.sbatch (sourced, not run).
#
# What it gives the batch scripts:
#   rodpo_setup          cd to the repo, activate the venv, export MASTER_ADDR / MASTER_PORT /
#                        GPUS_PER_NODE / RODPO_ENTRY, install the signal traps.
#   rodpo_run_step CMD   run CMD once per node (srun, one task per node) in the background and
#                        wait for it while staying responsive to signals; CMD is run by bash on
#                        each node, so per-node variables ($SLURM_NODEID) must be quoted to be
#                        expanded there.  Then requeues the job when SIGUSR1 arrived.
#
# Preemption / time limit protocol (see README.md):
#   * `#SBATCH --signal=B:USR1@<seconds>` makes SLURM send SIGUSR1 to this batch shell only,
#     <seconds> before the time limit (or at preemption with
#     SlurmctldParameters=preempt_send_user_signal).  Test by hand with
#     `scancel --signal=USR1 --batch JOBID`.
#   * The trap forwards SIGUSR1 to every process of the training step on every node
#     (`scancel --signal=USR1 JOBID`: all steps, not the batch shell), and again every
#     RODPO_RESIGNAL_INTERVAL s until the step ends (a process that was still starting up
#     ignored the first one).  The per-node launchers
#     (torchrun, accelerate, deepspeed) run with SIGUSR1 ignored so they are not killed by it; the
#     training processes inherit "ignored" and must install their own SIGUSR1 handler: save a
#     checkpoint, exit 0.
#   * When the step has ended the script runs `scontrol requeue $SLURM_JOB_ID`; the requeued job
#     starts the training again with `--resume auto` (always passed) and continues.
#   * SIGTERM (scancel, preemption without the user signal, the end of the time limit) is sent by
#     SLURM to every process itself; the trap only makes the batch shell wait for the step.
#     torchrun forwards SIGTERM to its workers and kills them 30 s later.
#
# Settings (environment, exported by sbatch to the job):
#   RODPO_REPO         repository root              (default: $SLURM_SUBMIT_DIR)
#   RODPO_VENV         virtualenv to activate       (default: $RODPO_REPO/.venv; "none" to skip)
#   RODPO_ENTRY        training script              (default: launch/train.py)
#   GPUS_PER_NODE      processes per node           (default: $SLURM_GPUS_ON_NODE, else GPU count, else 1)
#   RODPO_MASTER_ADDR  rendezvous address           (default: NodeAddr of the first node of the job)
#   RODPO_MASTER_PORT  rendezvous port              (default: 20000 + (SLURM_JOB_ID + 7919 * restarts) % 20000)
#   RODPO_REQUEUE      1: requeue after SIGUSR1     (default 1; 0 just stops)
#   RODPO_MAX_RESTARTS stop requeueing after this many restarts (default 1000)
#   RODPO_RESIGNAL_INTERVAL  after SIGUSR1, send it again to the step every N s (default 10)

_rodpo_log() { echo "[rodpo-slurm $(date +%H:%M:%S)] $*"; }

_rodpo_got_usr1=0
_rodpo_interrupted=0
_rodpo_step_pid=""
_rodpo_next_resend=0

_rodpo_forward_usr1() {
  # every process of every step of this job (on all nodes), not the batch shell
  scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || kill -USR1 "$_rodpo_step_pid" 2>/dev/null || true
  _rodpo_next_resend=$((SECONDS + ${RODPO_RESIGNAL_INTERVAL:-10}))
}

_rodpo_on_usr1() {
  _rodpo_got_usr1=1
  _rodpo_interrupted=1
  _rodpo_log "SIGUSR1: asking the training processes to checkpoint and stop; the job will be requeued"
  [ -n "$_rodpo_step_pid" ] && _rodpo_forward_usr1
}

_rodpo_on_term() {
  _rodpo_interrupted=1
  _rodpo_log "SIGTERM: waiting for the training step to stop"
}

rodpo_setup() {
  : "${SLURM_JOB_ID:?must run inside a SLURM job (sbatch)}"
  RODPO_REPO=${RODPO_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
  cd "$RODPO_REPO" || { echo "cannot cd to $RODPO_REPO" >&2; exit 1; }
  RODPO_VENV=${RODPO_VENV:-$RODPO_REPO/.venv}
  if [ "$RODPO_VENV" != none ]; then
    if [ -f "$RODPO_VENV/bin/activate" ]; then
      # shellcheck disable=SC1091
      . "$RODPO_VENV/bin/activate"
    else
      _rodpo_log "warning: no virtualenv at $RODPO_VENV; using $(command -v python || echo 'no python')"
    fi
  fi
  export RODPO_ENTRY=${RODPO_ENTRY:-launch/train.py}

  local ngpu=0
  if command -v nvidia-smi >/dev/null 2>&1; then ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
  export RODPO_HAS_GPU=$([ "${ngpu:-0}" -gt 0 ] && echo 1 || echo 0)
  if [ -z "${GPUS_PER_NODE:-}" ]; then
    if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then GPUS_PER_NODE=$SLURM_GPUS_ON_NODE
    elif [ "$ngpu" -gt 0 ]; then GPUS_PER_NODE=$ngpu
    else GPUS_PER_NODE=1; fi
  fi
  export GPUS_PER_NODE

  local head
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  if [ -n "${RODPO_MASTER_ADDR:-}" ]; then
    MASTER_ADDR=$RODPO_MASTER_ADDR
  else
    # NodeAddr is how SLURM itself reaches the node (equals the hostname unless set otherwise)
    MASTER_ADDR=$(scontrol show node "$head" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | head -n1 | cut -d= -f2)
    MASTER_ADDR=${MASTER_ADDR:-$head}
  fi
  # a requeued run gets another port: the previous run's may still be in TIME_WAIT
  MASTER_PORT=${RODPO_MASTER_PORT:-$((20000 + (SLURM_JOB_ID + 7919 * ${SLURM_RESTART_COUNT:-0}) % 20000))}
  export MASTER_ADDR MASTER_PORT
  export RODPO_NNODES=${SLURM_NNODES:-1}

  trap _rodpo_on_usr1 USR1
  trap _rodpo_on_term TERM

  _rodpo_log "job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} nodes $SLURM_JOB_NODELIST ($RODPO_NNODES)" \
    "master $MASTER_ADDR:$MASTER_PORT procs/node $GPUS_PER_NODE gpu=$RODPO_HAS_GPU entry $RODPO_ENTRY" \
    "repo $RODPO_REPO python $(command -v python)"
}

# rodpo_run_step CMD [ARGS...]: one task per node; returns (exits) with the step's status.
rodpo_run_step() {
  local srun_args=(--nodes="$RODPO_NNODES" --ntasks="$RODPO_NNODES" --ntasks-per-node=1
                   --kill-on-bad-exit=1 --label --export=ALL)
  # srun >= 22.05 no longer inherits --cpus-per-task from the allocation
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  local rc
  if [ "$_rodpo_got_usr1" = 1 ]; then
    _rodpo_log "SIGUSR1 arrived before the training started: not starting it"
    rc=0
  else
    # The launcher ignores SIGUSR1 (`trap '' USR1` is inherited through exec); the training
    # processes install their own handler.
    srun "${srun_args[@]}" bash -c 'trap "" USR1; exec "$@"' rodpo-node "$@" &
    _rodpo_step_pid=$!
    while :; do
      _rodpo_interrupted=0
      if [ "$_rodpo_got_usr1" = 1 ]; then
        # After SIGUSR1: poll, and send it again every RODPO_RESIGNAL_INTERVAL seconds, since a
        # process that had not installed its handler yet (still importing) ignored it.
        if ! kill -0 "$_rodpo_step_pid" 2>/dev/null; then wait "$_rodpo_step_pid"; rc=$?; break; fi
        ((SECONDS >= _rodpo_next_resend)) && _rodpo_forward_usr1
        sleep 1 &
        wait $! 2>/dev/null
        continue
      fi
      wait "$_rodpo_step_pid"
      rc=$?
      # `wait` returns early (status > 128) when a trapped signal arrives: wait again
      [ "$_rodpo_interrupted" = 1 ] && continue
      break
    done
    _rodpo_step_pid=""
    _rodpo_log "training step finished with status $rc"
  fi
  if [ "$_rodpo_got_usr1" = 1 ] && [ "${RODPO_REQUEUE:-1}" = 1 ]; then
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "${RODPO_MAX_RESTARTS:-1000}" ]; then
      _rodpo_log "not requeueing: restart count ${SLURM_RESTART_COUNT} reached RODPO_MAX_RESTARTS"
    else
      _rodpo_log "requeueing job $SLURM_JOB_ID (it resumes with --resume auto)"
      scontrol requeue "$SLURM_JOB_ID" && exit 0
      _rodpo_log "scontrol requeue failed (was the job submitted with --requeue / JobRequeue=1?)"
    fi
  fi
  exit "$rc"
}
