#!/usr/bin/env bash
# Stop or (re)start one daemon of the local cluster, e.g. to inject faults:
#
#   ctl.sh slurmctld|slurmdbd|slurmd|mariadbd|munged ACTION
#   ctl.sh user NAME...   (the tests' way to give a cluster this host's users: here they are the same host's)
#
# ACTION: stop | start | restart | status | freeze | thaw
# start waits until the daemon really serves again: slurmctld -> scontrol
# ping (and the nodes idle again), slurmdbd -> sacctmgr show cluster works,
# slurmd -> its pid is alive and, if slurmctld is up, the nodes are idle.
# freeze sends SIGSTOP (the daemon still accepts TCP connections but never
# answers: clients hit their timeouts), thaw sends SIGCONT.
# "slurmd" means every node's slurmd. stop never cancels jobs.
set -euo pipefail
LOG_TAG=ctl
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$HERE/common.sh"

usage() { die "usage: ctl.sh slurmctld|slurmdbd|slurmd|mariadbd|munged stop|start|restart|status|freeze|thaw"; }
if [[ ${1:-} == user ]]; then
    shift
    for name in "$@"; do id "$name" >/dev/null || die "no user $name"; done
    exit 0
fi
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

# do_signal SIG: send SIG to the daemon's live pid(s); fails if none runs.
do_signal() {
    local n pid found=0
    while read -r n; do
        if pid=$(daemon_pid "$n"); then
            kill "-$1" "$pid"
            log "$n ($pid): SIG$1"
            found=1
        fi
    done < <(names)
    ((found)) || die "$daemon is not running"
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
    freeze)
        do_signal STOP
        exit
        ;;
    thaw)
        do_signal CONT
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
