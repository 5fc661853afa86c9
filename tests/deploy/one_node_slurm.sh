#!/bin/bash
# A one-node SLURM on this host for tests/deploy/test_slurm.py, everything under DIR:
#
#   bash tests/deploy/one_node_slurm.sh start DIR   # munged, slurmctld, slurmd; prints SLURM_CONF=...
#   export SLURM_CONF=DIR/slurm.conf DSCALEDGD_SLURM=1
#   bash tests/deploy/one_node_slurm.sh stop DIR    # stops the three daemons by PID
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (the
# daemons and the jobs run as root). Its own munge key and socket, no cgroups
# (proctrack/linuxproc, task/none), free ports on 127.0.0.1, one partition "debug" with
# this host's CPUs and memory. Nothing is written outside DIR.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

stop() {
    local name pid _
    for name in slurmd slurmctld munged; do
        [ -f "$dir/run/$name.pid" ] || continue
        pid=$(cat "$dir/run/$name.pid")
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$dir/run/$name.pid"
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

fail() {
    echo "one_node_slurm.sh: $*" >&2
    for log in "$dir"/log/*.log; do
        [ -f "$log" ] && tail -n 5 "$log" >&2
    done
    stop
    exit 1
}

start() {
    local tool
    for tool in munged slurmctld slurmd sbatch sinfo; do
        command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin
        command -v "$tool" >/dev/null || fail "$tool not found (apt-get install slurm-wlm munge)"
    done
    [ "$(id -u)" = 0 ] || fail "needs root (SlurmUser=root)"

    mkdir -p "$dir"/{munge,run,log,ctld,slurmd}
    # munged wants its socket's directories searchable by all and its key private
    chmod 755 "$dir" "$dir/run"
    chmod 700 "$dir/munge"
    if [ ! -s "$dir/munge/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$dir/munge/munge.key"
    munged --key-file="$dir/munge/munge.key" --socket="$dir/run/munge.sock" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" || fail "munged did not start"

    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    # MinJobAge=5: a finished job's record goes after 5 s, and sbatch --wait polls every
    # 2 s (it polls no faster than MinJobAge/2 allows; at the default 300 it waits up
    # to 32 s between looks)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=dscaledgd-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/run/munge.sock
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
InactiveLimit=0
KillWait=10
MinJobAge=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem - 512)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -i || fail "slurmctld did not start"
    slurmd || fail "slurmd did not start"
    local _
    for _ in $(seq 60); do
        case $(sinfo --noheader --format=%T 2>/dev/null) in
            idle* | mixed* | allocated*)
                echo "SLURM_CONF=$SLURM_CONF"
                return 0
                ;;
        esac
        sleep 0.5
    done
    fail "the node did not come up within 30 s: $(sinfo 2>&1 || true)"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
