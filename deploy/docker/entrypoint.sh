#!/usr/bin/env bash
# Entrypoint of the compose cluster's Slurm and provider containers (compose.yaml): one role per
# container, each started with the functions of deploy/local-slurm/common.sh, so the compose cluster
# and the single-host cluster are one design. compose.yaml sets the SLURM_LOCAL_* settings that put
# each daemon on a host of its own (see common.sh).
#
#   entrypoint.sh init                 munge key and configuration into the shared folder, then exit
#   entrypoint.sh mariadb|slurmdbd|slurmctld|slurmd
#                                      that daemon (and munged), in the foreground until SIGTERM
#   entrypoint.sh client [CMD ARGS...] munged, then exec CMD (a shell if none)
#   entrypoint.sh dev-core [ARGS...]   exec the stand-in UCloud/Core
#   entrypoint.sh health ROLE          exit 0 if ROLE serves (compose healthchecks)
#   entrypoint.sh user NAME UID HOME SHELL GROUP:GID...
#                                      make (or remake) a login node's user here, the first group its
#                                      primary: the nodes and slurmctld need the users jobs run as
#
# A daemon that dies makes its container exit 1, so compose's restart policy applies.
set -euo pipefail
LOG_TAG=${LOG_TAG:-docker-${1:-entrypoint}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/../local-slurm/common.sh
source "$HERE/../local-slurm/common.sh"

# supervise NAME...: stay in the foreground while every named daemon runs, their logs on stdout
# ("docker compose logs"); SIGTERM stops them and exits 0.
supervise() {
    local names=("$@") n
    for n in "${names[@]}"; do
        [[ $n == mariadbd ]] && n=mysqld
        echo "$LOG/$n.log"
    done | xargs tail -n +1 -F 2>/dev/null &
    # shellcheck disable=SC2317  # invoked by the trap
    on_term() {
        stop_daemons "${names[@]}"
        exit 0
    }
    trap on_term TERM INT
    log "up: ${names[*]}"
    while :; do
        for n in "${names[@]}"; do
            daemon_running "$n" || die "$n is no longer running; see its log above"
        done
        sleep 2 &
        wait $! || true # in the background, so the trap runs at once
    done
}

needs_init() {
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "$SLURM_CONF and $MUNGE_KEY (the init service)" \
        test -s "$SLURM_CONF" -a -s "$MUNGE_KEY" || die "$SLURM_CONF or $MUNGE_KEY missing: did init run?"
    make_dirs
}

this_node() { echo "${SLURM_DOCKER_NODE:-$(hostname -s)}"; }

role=${1:-}
shift || true
case $role in
    init)
        ensure_munge_key
        render_configs
        log "cluster $SLURM_LOCAL_CLUSTER: $SLURM_CONF, nodes $(node_names | xargs)"
        ;;
    mariadb)
        make_dirs
        start_mariadbd
        supervise mariadbd
        ;;
    slurmdbd)
        needs_init
        start_munged
        wait_until "$SLURM_LOCAL_START_TIMEOUT" "MariaDB on $SLURM_LOCAL_DB_HOST" \
            bash -c "exec 3<>/dev/tcp/$SLURM_LOCAL_DB_HOST/$SLURM_LOCAL_DB_PORT" || die "MariaDB is not reachable"
        start_slurmdbd
        ensure_accounting
        supervise slurmdbd munged
        ;;
    slurmctld)
        needs_init
        start_munged
        start_slurmctld
        supervise slurmctld munged
        ;;
    slurmd)
        SLURM_LOCAL_NODE_NAMES=$(this_node) # start_slurmds starts the nodes listed: this one
        needs_init
        start_munged
        start_slurmds
        supervise "slurmd-$(this_node)" munged
        ;;
    client)
        needs_init
        start_munged
        (($#)) || set -- bash
        exec "$@"
        ;;
    dev-core) exec ucloud-slurm-provider dev-core serve "$@" ;;
    user)
        (($# >= 5)) || die "usage: user NAME UID HOME SHELL GROUP:GID..."
        name=$1 uid=$2 home=$3 shell=$4
        shift 4
        groups=()
        for group in "$@"; do
            gname=${group%%:*} gid=${group#*:}
            if getent group "$gname" >/dev/null; then groupmod -g "$gid" "$gname"; else groupadd -g "$gid" "$gname"; fi
            groups+=("$gname")
        done
        userdel "$name" 2>/dev/null || true
        useradd -M -u "$uid" -g "${groups[0]}" -G "$(IFS=,; echo "${groups[*]}")" -d "$home" -s "$shell" "$name"
        ;;
    health)
        case ${1:-} in
            mariadb) mariadb_ok ;;
            slurmdbd) cluster_listed ;;
            slurmctld) ctld_ok ;;
            slurmd) daemon_running "slurmd-$(this_node)" ;;
            *) die "health: unknown role ${1:-}" ;;
        esac >/dev/null 2>&1
        ;;
    *) sed -n '2,14p' "$0" && [[ $role =~ ^(-h|--help|)$ ]] ;;
esac
