#!/usr/bin/env bash
# A one-node Slurm cluster on this host for the Slurm executor tests: munged,
# slurmctld and slurmd from Debian's slurm-wlm and munge packages, with their
# key, configuration, state, logs, sockets and pid files under sbxrun's cache,
# so nothing in /etc is read or written and no system service is involved.
#
#   scripts/local-slurm.sh start    start it (no-op when it is up); prints
#                                   `export SLURM_CONF=...` on stdout, so
#                                   eval "$(scripts/local-slurm.sh start)"
#   scripts/local-slurm.sh env      print that line again
#   scripts/local-slurm.sh status   exit 0 when the node takes jobs
#   scripts/local-slurm.sh stop     cancel every job, stop the daemons
#
# The node is this host (hostname -s, address 127.0.0.1) with all its CPUs and
# most of its memory, in one partition "debug". Ports: $SBXRUN_SLURM_PORT for
# slurmctld, default 6817, and the next one for slurmd. Must run as root
# (slurmd starts jobs as their submitter). docs/slurm-local.md explains the
# configuration.
set -euo pipefail

cache=${SBXRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sbxrun}
dir="$cache/slurm"
port=${SBXRUN_SLURM_PORT:-6817}
timeout=${SBXRUN_SLURM_TIMEOUT:-60}
conf="$dir/slurm.conf"
key="$dir/munge/munge.key"
socket="$dir/munge/munged.sock"
munge_pid="$dir/munge/munged.pid"
ctld_pid="$dir/run/slurmctld.pid"
slurmd_pid="$dir/run/slurmd.pid"
# Slurm names this host by its short host name, as hostname -s prints it.
node=$(uname -n)
node=${node%%.*}

# The client commands and the daemons find everything through this file.
export SLURM_CONF="$conf"

say() { echo "local-slurm: $*" >&2; }
die() { say "$@"; exit 1; }

# pid_of PIDFILE COMM: the pid in PIDFILE if that process is alive and is COMM
# (a stale pid file may name a recycled pid).
pid_of() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
    echo "$pid"
}

up() { pid_of "$1" "$2" >/dev/null; }

node_state() {
    sinfo --noheader --nodes="$node" --format=%T 2>/dev/null | head -n 1
}

# Idle, mixed or allocated, possibly with a suffix such as "+" or "*"
# (a trailing "*" means not responding, which does not count).
node_usable() {
    case "$(node_state)" in
    *'*') return 1 ;;
    idle* | mixed* | allocated*) return 0 ;;
    *) return 1 ;;
    esac
}

all_up() {
    up "$munge_pid" munged && up "$ctld_pid" slurmctld && up "$slurmd_pid" slurmd
}

# show_logs NAME: the end of a daemon's output (its log, when it got as far
# as opening it), for an error message.
show_logs() {
    local f="$dir/log/$1.out"
    [ -s "$f" ] || f="$dir/log/$1.log"
    [ -s "$f" ] || return 0
    say "last lines of $f:"
    tail -n 15 "$f" >&2
}

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_for WHAT DAEMON CHECK...: poll CHECK every 0.2 s for up to $timeout s;
# fail at once if DAEMON (munged, slurmctld, slurmd or "") is gone.
wait_for() {
    local what=$1 daemon=$2 deadline pidfile
    shift 2
    pidfile="$dir/run/$daemon.pid"
    [ "$daemon" = munged ] && pidfile=$munge_pid
    deadline=$((SECONDS + timeout))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if "$@"; then return 0; fi
        if [ -n "$daemon" ] && ! up "$pidfile" "$daemon"; then
            say "$daemon exited while waiting for $what"
            show_logs "$daemon"
            return 1
        fi
        sleep 0.2
    done
    say "timed out after ${timeout}s waiting for $what"
    [ -n "$daemon" ] && show_logs "$daemon"
    return 1
}

# stop_daemon PIDFILE COMM: SIGTERM, then SIGKILL if it is still there after
# 15 s; returns once the process is gone.
stop_daemon() {
    local pid i
    pid=$(pid_of "$1" "$2") || { rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do
        [ -d "/proc/$pid" ] || break
        [ "$i" = 150 ] && { say "$2 ($pid) ignored SIGTERM; killing it"; kill -KILL "$pid" 2>/dev/null || true; }
        sleep 0.1
    done
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    rm -f "$1"
}

# Our slurmstepd processes: they keep this cluster's slurmd.log open (their
# command line and environment are overwritten by their process title, so
# those tell nothing).
our_stepds() {
    local p fd
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
        for fd in "$p"/fd/*; do
            if [ "$(readlink "$fd" 2>/dev/null)" = "$dir/log/slurmd.log" ]; then
                echo "${p#/proc/}"
                break
            fi
        done
    done
}

# PID and all its descendants.
tree() {
    local todo=("$@") all=() p
    while [ "${#todo[@]}" -gt 0 ]; do
        p=${todo[0]}
        todo=("${todo[@]:1}")
        all+=("$p")
        # shellcheck disable=SC2207 # pids are plain numbers
        todo+=($(ps -o pid= --ppid "$p" 2>/dev/null || true))
    done
    echo "${all[@]}"
}

active_jobs() {
    squeue --noheader --all --format=%A \
        --states=PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING,SIGNALING,STAGE_OUT 2>/dev/null
}

no_active_jobs() { [ -z "$(active_jobs)" ]; }

do_stop() {
    local jobs left
    if up "$ctld_pid" slurmctld; then
        jobs=$(active_jobs || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086 # one argument per job id
            scancel --full $jobs 2>/dev/null || true
            # KillWait in slurm.conf is 10 s: SIGTERM, then SIGKILL. Without
            # slurmd nothing ends them; the sweep below does.
            if up "$slurmd_pid" slurmd; then
                timeout=30 wait_for "the jobs to end" "" no_active_jobs ||
                    say "jobs still active; stopping anyway"
            fi
        fi
    fi
    stop_daemon "$slurmd_pid" slurmd
    stop_daemon "$ctld_pid" slurmctld
    # A job step whose slurmd went away first keeps running; end it and
    # whatever it started.
    left=$(our_stepds)
    if [ -n "$left" ]; then
        # shellcheck disable=SC2046,SC2086
        kill -KILL $(tree $left) 2>/dev/null || true
        say "killed leftover job steps: $left"
    fi
    stop_daemon "$munge_pid" munged
    # The runtime state goes; the key, slurm.conf and logs stay for a look.
    rm -rf "$dir/state" "$dir/spool" "$dir/run"
    rm -f "$socket" "$socket.lock"
}

write_conf() {
    local cpus mem_mib headroom real defmem topo
    cpus=$(nproc)
    mem_mib=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    # Leave a tenth of memory (between 256 MiB and 2 GiB) to the host.
    headroom=$((mem_mib / 10))
    [ "$headroom" -lt 256 ] && headroom=256
    [ "$headroom" -gt 2048 ] && headroom=2048
    real=$((mem_mib - headroom))
    [ "$real" -ge 128 ] || die "only ${mem_mib} MiB of memory; too little for a node"
    # A job that asks for no memory gets this much per CPU instead of the whole
    # node, so such jobs still share the node.
    defmem=$((real / cpus))
    [ "$defmem" -gt 1024 ] && defmem=1024
    # The socket/core/thread layout as slurmd sees it, when it covers exactly
    # the CPUs nproc counts; CR_Core hands out whole cores.
    topo=$(slurmd -C 2>/dev/null | head -n 1 |
        grep -o 'CPUs=[0-9]* Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' || true)
    case "$topo" in
    "CPUs=$cpus "*) ;;
    *) topo="CPUs=$cpus" ;;
    esac

    cat >"$conf.tmp" <<EOF
# Written by scripts/local-slurm.sh; rewritten on every start.
ClusterName=sbxrun
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root

AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket

StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$ctld_pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$dir/plugstack.conf
MailProg=/bin/true

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log

SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1

ReturnToService=2
MinJobAge=3600
KillWait=10

NodeName=$node NodeAddr=127.0.0.1 $topo RealMemory=$real State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$conf.tmp" "$conf"
    : >"$dir/plugstack.conf"
}

munge_ok() { munge -n --socket="$socket" 2>/dev/null | unmunge --socket="$socket" >/dev/null 2>&1; }
ctld_ok() { up "$ctld_pid" slurmctld && scontrol ping 2>/dev/null | grep -q 'is UP'; }

# launch NAME PIDFILE COMMAND...: run a daemon in the foreground in its own
# session, so its pid is known at once (a daemon that forks writes its pid
# file some time after the command returns). It runs in $dir/run, not in the
# caller's directory (which a test may delete), with an environment that is
# empty but for PATH: jobs get the submitter's environment, not the daemon's.
# What it prints before its log file is open lands in NAME.out (and, run in
# the foreground, Slurm's daemons copy their log there too). It must not
# inherit the lock (fd 9), or it would hold it for as long as it runs.
launch() {
    local name=$1 pidfile=$2
    shift 2
    (cd "$dir/run" && exec env -i PATH="$PATH" setsid "$@" \
        </dev/null >/dev/null 2>"$dir/log/$name.out" 9>&-) &
    local pid=$! comm
    echo "$pid" >"$pidfile"
    # Until the subshell, env and setsid have exec'd, the process has their
    # name; up() would take it for a dead daemon.
    for _ in $(seq 1 50); do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || break
        [ "$comm" = "$name" ] && break
        sleep 0.1
    done
}

do_start() {
    local p tool
    [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts jobs as their submitter)"
    for tool in munged mungekey munge slurmctld slurmd sbatch squeue sinfo scontrol scancel; do
        command -v "$tool" >/dev/null ||
            die "$tool is missing; run scripts/test-deps.sh (packages slurm-wlm, munge)"
    done
    [ -n "$node" ] || die "this host has no name (uname -n)"
    [ "${#socket}" -lt 100 ] ||
        die "munge socket path $socket is too long for a unix socket; use a shorter SBXRUN_CACHE_DIR"

    if all_up && node_usable; then
        say "already running (node $node $(node_state))"
        echo "export SLURM_CONF=$conf"
        return 0
    fi
    # Half up (a daemon died, or a start was interrupted): begin afresh. A
    # start that fails takes down again whatever it started.
    do_stop
    for p in "$port" "$((port + 1))"; do
        if port_busy "$p"; then
            die "port $p is taken (another Slurm?); set SBXRUN_SLURM_PORT to a free pair of ports"
        fi
    done

    trap 'say "start failed; stopping what was started"; do_stop' EXIT

    # Each cluster starts with no jobs (job ids start again at 1) and with new
    # logs; the last cluster's logs stay until then.
    rm -rf "$dir/log"
    mkdir -p "$dir/munge" "$dir/log" "$dir/run" "$dir/state" "$dir/spool"
    chmod 700 "$dir/munge"
    if [ ! -s "$key" ]; then
        mungekey --create --keyfile="$key"
    fi
    chmod 600 "$key"
    write_conf

    # --force: munged insists that every directory above its socket is
    # world-searchable, which /root (mode 700) is not; only root talks to it.
    # In the foreground munged logs to stderr, that is to munged.out.
    launch munged "$munge_pid" munged --foreground --force --key-file="$key" \
        --socket="$socket" --pid-file="$munge_pid" \
        --seed-file="$dir/munge/munged.seed"
    wait_for "munged to answer" munged munge_ok

    # -c: no state to recover (stop removed it), so don't look for any.
    launch slurmctld "$ctld_pid" slurmctld -D -c -f "$conf"
    wait_for "slurmctld to answer" slurmctld ctld_ok

    launch slurmd "$slurmd_pid" slurmd -D -f "$conf" -N "$node"
    wait_for "node $node to become idle" slurmd node_usable

    say "node $node $(node_state) ($(grep -o 'CPUs=[0-9]*' "$conf" | head -n 1), $(grep -o 'RealMemory=[0-9]*' "$conf") MiB); slurmctld on 127.0.0.1:$port"
    trap - EXIT
    echo "export SLURM_CONF=$conf"
}

# One start or stop at a time (tests running in parallel may all ask for the
# cluster); the lock goes with the process.
lock() {
    mkdir -p "$dir"
    exec 9>"$dir/lock"
    flock -w "$((timeout + 60))" 9 || die "another local-slurm.sh holds $dir/lock"
}

case "${1:-}" in
start)
    lock
    do_start
    ;;
env)
    echo "export SLURM_CONF=$conf"
    ;;
status)
    rc=0
    for d in munged:"$munge_pid" slurmctld:"$ctld_pid" slurmd:"$slurmd_pid"; do
        up "${d#*:}" "${d%%:*}" || { say "${d%%:*} is not running"; rc=1; }
    done
    if up "$ctld_pid" slurmctld; then
        state=$(node_state)
        echo "$node ${state:-unknown}"
        node_usable || rc=1
    else
        echo "$node down"
    fi
    exit "$rc"
    ;;
stop)
    lock
    do_stop
    ;;
*)
    echo "usage: $0 start | env | status | stop" >&2
    exit 2
    ;;
esac
