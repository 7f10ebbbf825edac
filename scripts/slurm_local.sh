#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, from Debian's packages (munge, slurmctld, slurmd,
# slurm-client; `bash scripts/setup.sh test` installs them as root): to try the cluster path of
# docs/scaling.md on a laptop, and for the tests. No systemd, no cgroups, no accounting database:
# every file (config, munge key and socket, state, logs) lives in one folder.
#
#   bash scripts/slurm_local.sh start    # start munged, slurmctld and slurmd; print SLURM_CONF
#   bash scripts/slurm_local.sh status   # what runs, and the node's state
#   bash scripts/slurm_local.sh stop     # cancel the jobs, stop the daemons
#
# Then, in the shell that submits (sbatch, submitit, hydra/launcher=submitit_slurm):
#   export SLURM_CONF=<folder>/slurm.conf
#
# Settings (environment):
#   SLURM_LOCAL_DIR   the folder (default: ${TMPDIR:-/tmp}/vidaccel-slurm)
#   SLURM_LOCAL_CPUS  CPUs the node offers (default: the machine's, at least 4: two 2-task jobs
#                     fit side by side; SLURM does not check them against the hardware here)
#   SLURM_LOCAL_PORT  slurmctld's port; slurmd takes the next one (default 6817)
#
# The node is named after `hostname -s` and listens on 127.0.0.1; its one partition is `local`
# (the default). Jobs run as the user who submits them; the daemons run as the user who starts
# them (root, or yourself: then only your own jobs run).
set -euo pipefail

dir=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/vidaccel-slurm}
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

usage() { echo "usage: bash scripts/slurm_local.sh start|status|stop" >&2; exit 2; }
die() { echo "error: $*" >&2; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
  local host user cpus memory port
  host=$(hostname -s)
  user=$(id -un)
  cpus=${SLURM_LOCAL_CPUS:-$(nproc)}
  [ "$cpus" -ge 4 ] || cpus=4
  memory=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
  port=${SLURM_LOCAL_PORT:-6817}
  cat > "$conf" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster, no cgroups, no accounting.
ClusterName=vidaccel-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a requeued job waits before it may start again (SLURM default: 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# Requeued jobs may run again (scontrol requeue, submitit's requeue on a time limit).
JobRequeue=1
# A cancelled or requeued job's processes get SIGTERM, then this many seconds before SIGKILL.
KillWait=30
MinJobAge=300
SchedulerType=sched/backfill
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  for tool in munged slurmctld slurmd sinfo scontrol; do
    command -v "$tool" >/dev/null || die "$tool not found: install Debian's munge, slurmctld, slurmd and slurm-client" \
      "(as root: bash scripts/setup.sh test, or apt-get install munge slurmctld slurmd slurm-client)"
  done
  if pid_alive "$dir/slurmctld.pid" && pid_alive "$dir/slurmd.pid" && pid_alive "$dir/munge/munged.pid"; then
    echo "[slurm_local] already running in $dir"
    echo "export SLURM_CONF=$conf"
    return 0
  fi
  stop_daemons quiet
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
  chmod 700 "$dir/munge"
  write_config
  # munged checks that nobody else can write its key, socket folder or log.
  if [ ! -s "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" \
    || die "munged did not start: $(tail -3 "$dir/munge/munged.log" 2>/dev/null)"
  # -c: a clean start (no jobs of an earlier cluster in this folder).
  slurmctld -c -f "$conf" || die "slurmctld did not start: $(tail -5 "$dir/log/slurmctld.log" 2>/dev/null)"
  slurmd -f "$conf" || die "slurmd did not start: $(tail -5 "$dir/log/slurmd.log" 2>/dev/null)"
  local host state=""
  host=$(hostname -s)
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle | mixed | allocated) break ;;
      down* | drain* | unknown*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  case "$state" in
    idle | mixed | allocated) ;;
    *) die "the node did not come up (state: ${state:-none}); logs in $dir/log: $(tail -3 "$dir/log/slurmd.log" 2>/dev/null)" ;;
  esac
  echo "[slurm_local] one node ($host, $(sinfo -h -n "$host" -o %c) CPUs, partition local) running in $dir"
  echo "export SLURM_CONF=$conf"
}

stop_daemons() {
  if [ -f "$conf" ] && pid_alive "$dir/slurmctld.pid"; then
    # Cancelled jobs get SIGTERM, then SIGKILL after KillWait (30 s): wait for them to go.
    scancel --quiet --full --user="$(id -un)" >/dev/null 2>&1 || true
    for _ in $(seq 1 80); do
      [ -z "$(squeue -h 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  local pidfile pid
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    pid_alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  [ "${1:-}" = quiet ] || echo "[slurm_local] stopped ($dir)"
}

status() {
  local name pidfile
  for name in munged slurmctld slurmd; do
    case $name in munged) pidfile="$dir/munge/munged.pid" ;; *) pidfile="$dir/$name.pid" ;; esac
    if pid_alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: not running"; fi
  done
  if pid_alive "$dir/slurmctld.pid"; then
    sinfo -N -o "%N %T %c %P" || true
    squeue || true
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop_daemons ;;
  status) status ;;
  *) usage ;;
esac
