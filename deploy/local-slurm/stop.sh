#!/usr/bin/env bash
# Stop the local Slurm cluster started by start.sh: cancel all jobs while
# slurmctld is up, wait for them to end, then stop slurmd(s), slurmctld,
# slurmdbd, mariadbd and munged by their pid files (SIGTERM, then SIGKILL
# after SLURM_LOCAL_STOP_TIMEOUT seconds). Processes not started by start.sh
# are never signalled.
#
#   stop.sh [--purge]      --purge: also remove $SLURM_LOCAL_DIR
set -euo pipefail
LOG_TAG=stop
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$HERE/common.sh"

purge=0
for arg in "$@"; do
    case $arg in
        --purge) purge=1 ;;
        -h | --help)
            sed -n '2,8p' "$0"
            exit 0
            ;;
        *) die "unknown argument: $arg (usage: stop.sh [--purge])" ;;
    esac
done

if [[ ! -d $D ]]; then
    log "$D does not exist; nothing to stop"
    exit 0
fi
take_lock
stop_all
if ((purge)); then
    log "removing $D"
    rm -rf "$D"
fi
log "stopped"
