#!/usr/bin/env bash
# A throw-away Slurm cluster on this one machine, for tests/studies/pretraining/test_slurm.py (CPU only, loopback only):
# munge, one slurmctld and two slurmd emulating the nodes n1 and n2 (Debian's slurmd runs several per
# host: `slurmd -N n1`). Needs root. Idempotent: installs Debian's slurm-wlm and munge when missing,
# (re)writes the configuration, starts the cluster unless all of its daemons run, waits until both
# nodes are idle. A start always begins from empty state: /var/tmp outlives the daemons (a machine
# started from a saved disk, a killed test run), and a controller that recovered the old state would
# show the old jobs RUNNING on nodes where nothing runs, holding them from every new job.
#
#   .ci/install_slurm.sh [start]   install + configure + start (the default)
#   .ci/install_slurm.sh restart   stop, then start afresh (forgets every job)
#   .ci/install_slurm.sh stop      stop the daemons this script started
#
# Everything lives under $UNIMLIP_SLURM_DIR (default /var/tmp/openclip-unimlip-slurm); the system's
# /etc/slurm is never touched, so a real cluster's configuration on the same machine is unaffected.
# Clients find this cluster through SLURM_CONF=$UNIMLIP_SLURM_DIR/slurm.conf.
set -euo pipefail
STATE=${UNIMLIP_SLURM_DIR:-/var/tmp/openclip-unimlip-slurm}
CONF=$STATE/slurm.conf
NODES=(n1 n2)
CTLD_PORT=16817              # ours: unusual ports, so nothing else on the machine is in the way
NODE_PORTS=(16818 16819)

log() { echo "install_slurm: $*" >&2; }

running() {  # NAME (slurmd-n1, slurmctld, munged) -> is the process its pidfile names that daemon?
    # (a pidfile left from an earlier machine may name a pid some other program has now)
    local pidfile=$STATE/$1.pid
    [[ -s $pidfile ]] && [[ $(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null) == "${1%%-*}" ]]
}

stop() {  # [NAME...]: those daemons, or all of ours
    local name pid tries names=("$@")
    (( ${#names[@]} )) || names=("${NODES[@]/#/slurmd-}" slurmctld munged)
    for name in "${names[@]}"; do
        if running "$name"; then
            pid=$(cat "$STATE/$name.pid")
            kill "$pid"
            for tries in $(seq 50); do  # gone before a restart binds its port again
                [[ -d /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || break
                sleep 0.2
            done
            log "stopped $name"
        fi
        rm -f "$STATE/$name.pid"
    done
}

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p "$STATE/log"
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } \
            >"$STATE/log/apt.log" 2>&1; then
        cat "$STATE/log/apt.log" >&2
        exit 1
    fi
}

configure() {
    mkdir -p "$STATE"/{ctld,log} "${NODES[@]/#/$STATE/spool-}"
    local host
    host=$(hostname -s)   # slurmctld only accepts a SlurmctldHost that names this machine
    {
        echo "# written by .ci/install_slurm.sh: a one-host test cluster"
        echo "ClusterName=unimlip-ci"
        echo "SlurmctldHost=$host(127.0.0.1)"
        echo "SlurmctldPort=$CTLD_PORT"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "MpiDefault=none"
        echo "ProctrackType=proctrack/linuxproc"   # no cgroups in containers
        echo "TaskPlugin=task/none"
        echo "SwitchType=switch/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"          # CPU-only: jobs are sized by CPUs
        echo "SlurmdParameters=config_overrides"    # the emulated nodes may claim more than the machine has
        echo "ReturnToService=2"
        echo "JobRequeue=1"
        echo "MinJobAge=600"                        # finished jobs stay visible to scontrol for the tests
        echo "KillWait=5"
        echo "SchedulerType=sched/backfill"
        echo "SchedulerParameters=sched_interval=2"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "JobCompType=jobcomp/none"
        echo "StateSaveLocation=$STATE/ctld"
        echo "SlurmctldPidFile=$STATE/slurmctld.pid"
        echo "SlurmctldLogFile=$STATE/log/slurmctld.log"
        echo "SlurmdSpoolDir=$STATE/spool-%n"
        echo "SlurmdPidFile=$STATE/slurmd-%n.pid"
        echo "SlurmdLogFile=$STATE/log/slurmd-%n.log"
        local i
        for i in "${!NODES[@]}"; do
            echo "NodeName=${NODES[i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${NODE_PORTS[i]} CPUs=2 RealMemory=2000 State=UNKNOWN"
        done
        echo "PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.new"
    if ! cmp -s "$CONF.new" "$CONF"; then
        mv "$CONF.new" "$CONF"
        stop   # a changed configuration needs fresh daemons
    else
        rm "$CONF.new"
    fi
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged already answers (e.g. the one Debian's package started)
    fi
    [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key; }
    chown munge:munge /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- munged
    pgrep -u munge -n munged >"$STATE/munged.pid"
    log "started munged"
}

start_slurm() {
    export SLURM_CONF=$CONF
    local node daemons=("${NODES[@]/#/slurmd-}" slurmctld) all_running=1
    for node in "${daemons[@]}"; do
        running "$node" || all_running=0
    done
    if (( ! all_running )); then
        stop "${daemons[@]}"
        rm -rf "${STATE:?}/ctld" "${NODES[@]/#/$STATE/spool-}"   # the jobs of daemons that are gone
        mkdir -p "$STATE/ctld" "${NODES[@]/#/$STATE/spool-}"
        slurmctld -c -f "$CONF" && log "started slurmctld (empty state)"
        for node in "${NODES[@]}"; do
            slurmd -f "$CONF" -N "$node" && log "started slurmd $node"
        done
    fi
    local tries
    for tries in $(seq 60); do
        if [[ $(sinfo -h -N -t idle,mixed,allocated -o %N 2>/dev/null | sort -u | wc -l) -eq ${#NODES[@]} ]]; then
            log "cluster up (SLURM_CONF=$CONF)"
            return
        fi
        # nodes that were down (a previous run's daemons were stopped) come back once slurmd answers
        scontrol update nodename="$(IFS=,; echo "${NODES[*]}")" state=resume 2>/dev/null || true
        sleep 1
    done
    log "nodes did not come up; see $STATE/log"
    sinfo -N >&2 || true
    exit 1
}

[[ $EUID -eq 0 ]] || { log "needs root (it installs packages and starts slurmd)"; exit 1; }
case "${1:-start}" in
    start) install; configure; start_munge; start_slurm ;;
    restart) install; configure; stop; start_munge; start_slurm ;;
    stop) stop ;;
    *) log "usage: $0 [start|restart|stop]"; exit 2 ;;
esac
