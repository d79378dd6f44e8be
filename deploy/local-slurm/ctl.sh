#!/usr/bin/env bash
# Stop or (re)start one daemon of the local cluster, e.g. to inject faults:
#
#   ctl.sh slurmctld|slurmdbd|slurmd|mariadbd|munged stop|start|restart|status
#
# start waits until the daemon really serves again: slurmctld -> scontrol
# ping (and the nodes idle again), slurmdbd -> sacctmgr show cluster works,
# slurmd -> its pid is alive and, if slurmctld is up, the nodes are idle.
# "slurmd" means every node's slurmd. Stop never cancels jobs.
set -euo pipefail
LOG_TAG=ctl
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() { die "usage: ctl.sh slurmctld|slurmdbd|slurmd|mariadbd|munged stop|start|restart|status"; }
(($# == 2)) || usage
daemon=$1
action=$2
[[ -f $SLURM_CONF ]] || die "$SLURM_CONF missing; run start.sh first"

names() {
    if [[ $daemon == slurmd ]]; then
        {
            slurmd_names
            node_names | sed 's/^/slurmd-/'
        } | sort -u
    else
        echo "$daemon"
    fi
}

do_stop() {
    local -a ns
    mapfile -t ns < <(names)
    stop_daemons "${ns[@]}"
}

do_start() {
    case $daemon in
        munged) start_munged ;;
        mariadbd) start_mariadbd ;;
        slurmdbd)
            start_slurmdbd
            ;;
        slurmctld)
            start_slurmctld
            wait_until "$SLURM_LOCAL_START_TIMEOUT" "all nodes idle in sinfo" nodes_ok ||
                log "WARNING: nodes not idle: $(sinfo -h -N -o '%N %t' 2>&1 | tr '\n' ' ')"
            ;;
        slurmd)
            start_slurmds
            if daemon_running slurmctld && ctld_ok 2>/dev/null; then
                wait_until "$SLURM_LOCAL_START_TIMEOUT" "all nodes idle in sinfo" nodes_ok ||
                    log "WARNING: nodes not idle: $(sinfo -h -N -o '%N %t' 2>&1 | tr '\n' ' ')"
            fi
            ;;
    esac
}

do_status() {
    local n pid rc=0
    while read -r n; do
        if pid=$(daemon_pid "$n"); then
            echo "$n running $pid"
        else
            echo "$n stopped"
            rc=3
        fi
    done < <(names)
    return "$rc"
}

case $daemon in
    slurmctld | slurmdbd | slurmd | mariadbd | munged) ;;
    *) usage ;;
esac
case $action in
    status)
        do_status
        exit
        ;;
    stop | start | restart) ;;
    *) usage ;;
esac

take_lock
case $action in
    stop) do_stop ;;
    start) do_start ;;
    restart)
        do_stop
        do_start
        ;;
esac
