#!/usr/bin/env bash
# A real two-node SLURM cluster on one machine, for trying the sbatch scripts and for CI.
#
#   sudo launch/slurm/local_cluster.sh up        # install (apt) if needed, start munge + slurm, wait idle
#   sudo launch/slurm/local_cluster.sh exec sbatch -N2 launch/slurm/train_torchrun.sbatch --config ...
#   sudo launch/slurm/local_cluster.sh exec squeue           # any client: sinfo, scontrol, srun, ...
#   sudo launch/slurm/local_cluster.sh status    # exit 0 when every node answers, 1 otherwise
#   sudo launch/slurm/local_cluster.sh down      # stop everything, delete namespaces and state
#   sudo launch/slurm/local_cluster.sh env       # prints SLURM_CONF / namespace, for scripting
#
# Layout (Debian slurm-wlm 22.05 + munge, all as root):
#   namespace ${NS}-ctl : bridge ${SUBNET}.254 "ctl", slurmctld, and every client (`exec`)
#   namespace ${NS}-nK  : slurmd for node nK at ${SUBNET}.K, own hostname nK and /etc/hosts
#   joined by veth pairs to the bridge; nothing is routed outside the namespaces.
# Each daemon is started as `nsenter --net=NS unshare --uts --mount sh -c "mount --bind HOSTS
# /etc/hosts && hostname nK && exec slurmd ..."` (`ip netns exec` hides /sys/fs/cgroup and
# slurmd 22.05 then dies in its cgroup plugin).  Each node gets a private /dev/shm (a tmpfs that
# vanishes with the node, e.g. DeepSpeed's shm buffers).  The repository and /tmp are the host's own
# file systems, so jobs see the same paths (shared file system, as on a real cluster).
#
# Settings (environment): RODPO_SLURM_DIR (state, default /tmp/rodpo-slurm), RODPO_SLURM_NS
# (namespace prefix, default rodpo-slurm), RODPO_SLURM_SUBNET (first three octets, default
# 10.199.0), RODPO_SLURM_NNODES (default 2), RODPO_SLURM_UP_TIMEOUT (seconds, default 60).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

D=${RODPO_SLURM_DIR:-/tmp/rodpo-slurm}
NS=${RODPO_SLURM_NS:-rodpo-slurm}
SUBNET=${RODPO_SLURM_SUBNET:-10.199.0}
NNODES=${RODPO_SLURM_NNODES:-2}
UP_TIMEOUT=${RODPO_SLURM_UP_TIMEOUT:-60}
CTL_NS=$NS-ctl
CTL_HOST=ctl
CTL_ADDR=$SUBNET.254
CONF=$D/slurm.conf
BR=rodpo-br0

log() { echo "[local_cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
nodes() { local i; for ((i = 1; i <= NNODES; i++)); do echo "n$i"; done; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (namespaces, daemons, apt)"; }

# ---------------------------------------------------------------- packages and munge
ensure_packages() {
  local missing=0 c
  for c in slurmctld slurmd sinfo munged munge unmunge ip nsenter unshare flock; do
    command -v "$c" >/dev/null 2>&1 || missing=1
  done
  [ $missing = 0 ] && return 0
  log "installing slurm-wlm + munge with apt-get"
  local pkgs=(slurm-wlm munge iproute2 util-linux) aptlog
  aptlog=$(mktemp)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends "${pkgs[@]}" >"$aptlog" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    apt-get update -q >>"$aptlog" 2>&1 || true
    apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends "${pkgs[@]}" >>"$aptlog" 2>&1 \
      || { tail -n 20 "$aptlog" >&2; die "apt-get install failed"; }
  fi
  rm -f "$aptlog"
}

# A munged of our own (own key, socket, pid file under $D): independent of any system munged,
# and several clusters (other state dir + namespace prefix) can coexist.
MUNGE_SOCK=$D/munge/munge.sock
munge_ok() { munge -S "$MUNGE_SOCK" -n 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; }

start_munge() {
  munge_ok && return 0
  install -d -m 0755 "$D/munge"
  [ -s "$D/munge/munge.key" ] || mungekey -c -b 1024 -k "$D/munge/munge.key" 2>/dev/null \
    || { dd if=/dev/urandom bs=128 count=1 of="$D/munge/munge.key" 2>/dev/null; chmod 600 "$D/munge/munge.key"; }
  munged -S "$MUNGE_SOCK" --key-file="$D/munge/munge.key" --pid-file="$D/munge/munged.pid" \
    --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed" 9<&- \
    || { tail -n 5 "$D/munge/munged.log" >&2 2>/dev/null; die "munged failed to start"; }
  local i
  for ((i = 0; i < 50; i++)); do munge_ok && return 0; sleep 0.1; done
  die "munged does not answer (munge -S $MUNGE_SOCK -n | unmunge -S $MUNGE_SOCK)"
}

stop_munge() {
  local f=$D/munge/munged.pid pid i
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- namespaces
ns_exists() { [ -e "/run/netns/$1" ]; }

make_network() {
  ip netns add "$CTL_NS"
  ip -n "$CTL_NS" link set lo up
  ip -n "$CTL_NS" link add "$BR" type bridge
  ip -n "$CTL_NS" addr add "$CTL_ADDR/24" dev "$BR"
  ip -n "$CTL_NS" link set "$BR" up
  local i n
  for ((i = 1; i <= NNODES; i++)); do
    n=n$i
    ip netns add "$NS-$n"
    ip -n "$NS-$n" link set lo up
    ip -n "$CTL_NS" link add "v-$n" type veth peer name eth0 netns "$NS-$n"
    ip -n "$CTL_NS" link set "v-$n" master "$BR" up
    ip -n "$NS-$n" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$NS-$n" link set eth0 up
  done
}

write_files() {
  mkdir -p "$D"/{state,log,run,spool}
  {
    echo "127.0.0.1 localhost"
    echo "$CTL_ADDR $CTL_HOST"
    local i; for ((i = 1; i <= NNODES; i++)); do echo "$SUBNET.$i n$i"; done
    # IPv4-mapped forms: torch's c10d looks peers up by them (else a warning per connection)
    echo "::ffff:$CTL_ADDR $CTL_HOST"
    for ((i = 1; i <= NNODES; i++)); do echo "::ffff:$SUBNET.$i n$i"; done
  } >"$D/hosts"
  # No DNS inside the cluster: glibc then tries 127.0.0.1 of the namespace only.
  echo "options timeout:1 attempts:1" >"$D/resolv.conf"
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
  mem_mb=$((mem_mb / NNODES > 512 ? mem_mb / NNODES - 256 : 256))
  cat >"$CONF" <<EOF
# written by launch/slurm/local_cluster.sh
ClusterName=rodpo-local
# job ids continue across up/down (state is deleted), so runs/slurm-<id>.out logs do not mix
FirstJobId=$(( $(date +%s) % 60000000 + 1 ))
SlurmctldHost=$CTL_HOST($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=10
MinJobAge=600
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
EOF
  local i
  for ((i = 1; i <= NNODES; i++)); do
    echo "NodeName=n$i NodeAddr=$SUBNET.$i NodeHostname=n$i CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN" >>"$CONF"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
  for ((i = 1; i <= NNODES; i++)); do mkdir -p "$D/spool/n$i"; done
}

# run "$@" inside namespace $1 with its own hostname $2 and our hosts file
in_ns_daemon() {
  local ns=$1 host=$2; shift 2
  nsenter --net="/run/netns/$ns" unshare --uts --mount sh -c \
    'mount --bind "$0" /etc/hosts && mount --bind "${0%/*}/resolv.conf" /etc/resolv.conf &&
     mount -t tmpfs -o mode=1777 rodpo-shm /dev/shm && hostname "$1" && shift && exec "$@"' \
    "$D/hosts" "$host" env SLURM_CONF="$CONF" "$@" 9<&-   # daemons must not inherit the lock
}

client() { nsenter --net="/run/netns/$CTL_NS" env SLURM_CONF="$CONF" "$@"; }

node_states() { client timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null; }

all_idle() {
  local out n
  out=$(node_states) || return 1
  for n in $(nodes); do
    grep -Eq "^$n (idle|mixed|allocated|completing)\$" <<<"$out" || return 1
  done
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

healthy() {
  [ -f "$CONF" ] && ns_exists "$CTL_NS" && munge_ok && pid_alive "$D/run/slurmctld.pid" || return 1
  local n; for n in $(nodes); do pid_alive "$D/run/slurmd-$n.pid" || return 1; done
  all_idle
}

usage_hint() {
  cat <<EOF
local SLURM cluster is up: nodes $(nodes | tr '\n' ' ')(${SUBNET}.1..${NNODES}), controller $CTL_ADDR
  run clients with:  $0 exec sinfo
                     $0 exec sbatch -N $NNODES launch/slurm/train_torchrun.sbatch --config configs/demo.yaml
  or by hand:        nsenter --net=/run/netns/$CTL_NS env SLURM_CONF=$CONF <cmd>
  stop with:         $0 down
EOF
}

# ---------------------------------------------------------------- commands
cmd_up() {
  need_root
  ensure_packages
  if healthy; then log "already up"; usage_hint; return 0; fi
  if [ -e "$D" ] || ns_exists "$CTL_NS"; then log "stale or partial cluster found: tearing it down first"; cmd_down; fi
  mkdir -p "$D"
  start_munge
  make_network
  write_files
  local n
  in_ns_daemon "$CTL_NS" "$CTL_HOST" slurmctld -f "$CONF" \
    || { tail -n 30 "$D/log/slurmctld.log" >&2 2>/dev/null; die "slurmctld failed to start"; }
  for n in $(nodes); do
    in_ns_daemon "$NS-$n" "$n" slurmd -f "$CONF" -N "$n" \
      || { tail -n 30 "$D/log/slurmd-$n.log" >&2 2>/dev/null; die "slurmd $n failed to start"; }
  done
  local deadline=$((SECONDS + UP_TIMEOUT))
  until all_idle; do
    if ((SECONDS >= deadline)); then
      log "nodes not idle after ${UP_TIMEOUT}s:"; node_states >&2 || true
      for f in "$D"/log/*.log; do echo "== $f" >&2; tail -n 15 "$f" >&2; done
      die "cluster did not come up (logs in $D/log; \`$0 down\` cleans up)"
    fi
    sleep 0.3
  done
  # The nodes must reach each other (torch.distributed rendezvous goes node to node).
  # Check with a TCP connection from the last node to n1's slurmd port.
  nsenter --net="/run/netns/$NS-n$NNODES" timeout 5 bash -c "exec 3<>/dev/tcp/$SUBNET.1/6818" 2>/dev/null \
    || die "n$NNODES cannot open a TCP connection to n1 ($SUBNET.1:6818)"
  usage_hint
}

kill_ns_pids() {  # $1 = namespace, $2 = signal
  local p
  for p in $(ip netns pids "$1" 2>/dev/null); do kill "-$2" "$p" 2>/dev/null || true; done
}

cmd_down() {
  need_root
  local n all_ns=("$CTL_NS") i
  for ((i = 1; i <= 9; i++)); do all_ns+=("$NS-n$i"); done
  if ns_exists "$CTL_NS" && [ -f "$CONF" ] && pid_alive "$D/run/slurmctld.pid"; then
    client timeout 10 scontrol shutdown >/dev/null 2>&1 || true
  fi
  # wait for the daemons (and any job processes) to leave, then force them
  local deadline=$((SECONDS + 10)) left
  while :; do
    left=0
    for n in "${all_ns[@]}"; do ns_exists "$n" && [ -n "$(ip netns pids "$n" 2>/dev/null)" ] && left=1; done
    for f in "$D"/run/*.pid; do pid_alive "$f" && left=1; done
    [ $left = 0 ] && break
    ((SECONDS >= deadline)) && break
    sleep 0.2
  done
  if [ $left = 1 ]; then
    for n in "${all_ns[@]}"; do ns_exists "$n" && kill_ns_pids "$n" TERM; done
    for f in "$D"/run/*.pid; do pid_alive "$f" && kill -TERM "$(cat "$f")" 2>/dev/null; done
    sleep 1
    for n in "${all_ns[@]}"; do ns_exists "$n" && kill_ns_pids "$n" KILL; done
    for f in "$D"/run/*.pid; do pid_alive "$f" && kill -KILL "$(cat "$f")" 2>/dev/null; done
    sleep 0.2
  fi
  for n in "${all_ns[@]}"; do ns_exists "$n" && ip netns del "$n" 2>/dev/null || true; done
  stop_munge
  rm -rf "$D"
  log "down"
}

cmd_status() {
  local rc=0
  echo "state dir: $D ($( [ -d "$D" ] && echo present || echo absent))"
  echo "namespaces: $(ip netns list 2>/dev/null | awk -v p="$NS-" 'index($1, p) == 1 {printf "%s ", $1}')"
  munge_ok && echo "munge: ok" || { echo "munge: not answering"; rc=1; }
  if ns_exists "$CTL_NS" && [ -f "$CONF" ]; then
    node_states || { echo "sinfo: no answer from slurmctld"; rc=1; }
  else
    echo "cluster: not up"; rc=1
  fi
  healthy || rc=1
  return $rc
}

cmd_exec() {
  [ $# -gt 0 ] || die "usage: $0 exec CMD [ARGS...]"
  ns_exists "$CTL_NS" && [ -f "$CONF" ] || die "cluster is not up (run: $0 up)"
  exec nsenter --net="/run/netns/$CTL_NS" env SLURM_CONF="$CONF" "$@"
}

cmd_env() {
  echo "SLURM_CONF=$CONF"
  echo "RODPO_SLURM_CTL_NETNS=/run/netns/$CTL_NS"
  echo "RODPO_SLURM_NODES=\"$(nodes | tr '\n' ' ' | sed 's/ $//')\""
  echo "RODPO_SLURM_NODE_ADDRS=\"$(for ((i = 1; i <= NNODES; i++)); do printf '%s ' "$SUBNET.$i"; done | sed 's/ $//')\""
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    up | down)
      # serialise up/down between concurrent callers (lock on this file: no state left behind)
      exec 9<"${BASH_SOURCE[0]}"
      flock -w 120 9 || die "could not take the lock on ${BASH_SOURCE[0]}"
      "cmd_$cmd" ;;
    status) cmd_status ;;
    exec) cmd_exec "$@" ;;
    env) cmd_env ;;
    *) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] || [ "$cmd" = -h ] || [ "$cmd" = help ] || exit 2 ;;
  esac
}

main "$@"
