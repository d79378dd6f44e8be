#!/usr/bin/env bash
# Start (or complete) a single-host Slurm cluster with accounting under
# $SLURM_LOCAL_DIR, as root, without systemd. Idempotent: daemons that are
# already running (pid file + live process) are left alone. Returns once the
# cluster is usable: scontrol ping OK, all nodes idle, cluster in sacctmgr.
#
#   start.sh [--fresh]     --fresh: stop what runs, wipe the directory first
#
# Settings: see common.sh and README.md. Clients: . "$SLURM_LOCAL_DIR/env.sh"
set -euo pipefail
LOG_TAG=start
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
source "$HERE/common.sh"

fresh=0
for arg in "$@"; do
    case $arg in
        --fresh) fresh=1 ;;
        -h | --help)
            sed -n '2,10p' "$0"
            exit 0
            ;;
        *) die "unknown argument: $arg (usage: start.sh [--fresh])" ;;
    esac
done

require_packages
take_lock

if ((fresh)); then
    stop_all
    log "wiping $D"
    find "$D" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
fi

make_dirs
render_configs
start_munged
start_mariadbd
start_slurmdbd
ensure_accounting
start_slurmctld
start_slurmds

wait_until "$SLURM_LOCAL_START_TIMEOUT" "scontrol ping" ctld_ok ||
    die "slurmctld does not answer, see $LOG/slurmctld.log"
wait_until "$SLURM_LOCAL_START_TIMEOUT" "all nodes idle in sinfo" nodes_ok ||
    die "nodes not idle: $(sinfo -h -N -o '%N %t' 2>&1 | tr '\n' ' ') see $LOG/slurmd-*.log"
wait_until "$SLURM_LOCAL_START_TIMEOUT" "cluster in sacctmgr" cluster_listed ||
    die "cluster $SLURM_LOCAL_CLUSTER not registered, see $LOG/slurmdbd.log"
write_env_sh

log "cluster $SLURM_LOCAL_CLUSTER up (Slurm $(slurm_version)); use: . $D/env.sh"
