#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the launcher tests (tests/test_slurm.py).
#
#   bash .ci/slurm_local.sh          # install (Debian slurm-wlm + munge) if needed, then start
#   bash .ci/slurm_local.sh stop     # stop the daemons this script started
#
# Idempotent: a cluster that already answers `sinfo` is left alone. Runs as root (the daemons
# and the jobs run as root). One node (this host, `hostname -s`, with `nproc` CPUs), one
# partition `debug`; no accounting, so `sacct` is absent (submitit warns and works). State and
# logs live under /tmp/condattn-slurm. Takes ~20 s with the install, ~5 s without.
set -euo pipefail

STATE=/tmp/condattn-slurm
CONF_DIR=/etc/slurm
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)

if [[ "${1:-}" == "stop" ]]; then
    for d in slurmd slurmctld munged; do
        [[ -f "$STATE/$d.pid" ]] && kill "$(cat "$STATE/$d.pid")" 2>/dev/null || true
    done
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "slurm_local.sh: run as root (it installs packages and starts the SLURM daemons)" >&2
    exit 1
fi

if command -v sinfo >/dev/null && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    echo "slurm_local.sh: a cluster already answers: $(sinfo -h -o '%P %D %T %C')"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm_local.sh: installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
    }
fi

mkdir -p "$STATE"/{ctld,d,log} /etc/munge /var/lib/munge /var/log/munge /run/munge "$CONF_DIR"
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R root:root /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key

cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by condattn's .ci/slurm_local.sh: one node, one partition, no accounting.
ClusterName=condattn
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
printf 'ConstrainCores=no\nConstrainRAMSpace=no\n' >"$CONF_DIR/cgroup.conf"

pgrep -x munged >/dev/null || munged --force --pid-file "$STATE/munged.pid" 2>/dev/null \
    || munged --force
pgrep -x slurmctld >/dev/null || slurmctld -c
pgrep -x slurmd >/dev/null || slurmd -c

for _ in $(seq 60); do
    if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
        echo "slurm_local.sh: up: $(sinfo -h -o '%P %D %T %C') (state and logs: $STATE)"
        exit 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm_local.sh: the cluster did not come up; see $STATE/log/" >&2
sinfo >&2 || true
exit 1
