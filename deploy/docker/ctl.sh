#!/usr/bin/env bash
# The tests' control channel to the compose cluster (PROVIDER_TEST_SLURM_CTL), run on the host:
#
#   ctl.sh slurmctld|slurmdbd|slurmd|mariadbd stop|start|restart|freeze|thaw
#   ctl.sh user NAME...     give the cluster this host's users NAME (same uid, groups, home and shell)
#
# As deploy/local-slurm/ctl.sh for the single-host cluster: freeze stops the daemon without closing its
# port (docker pause), start returns once the daemon serves again (healthy, and for slurmctld the nodes
# usable as the login node sees them). "slurmd" means both nodes. Never cancels a job.
set -euo pipefail
LOG_TAG=ctl
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOGIN_CONF=${SLURM_CONF:-${UCLOUD_COMPOSE_DIR:-/tmp/ucloud-compose}/login/etc/slurm.conf}
# shellcheck source=SCRIPTDIR/../local-slurm/common.sh
source "$HERE/../local-slurm/common.sh" # log, die, wait_until
export SLURM_CONF=$LOGIN_CONF # the login node's, which common.sh's defaults replaced
compose() { docker compose -f "$HERE/compose.yaml" "$@"; }
usage() { die "usage: ctl.sh slurmctld|slurmdbd|slurmd|mariadbd stop|start|restart|freeze|thaw, or ctl.sh user NAME..."; }

healthy() {
    local service
    for service in "$@"; do
        [[ $(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$service")") == healthy ]] || return 1
    done
}
# Every node usable again (idle, or running jobs that outlived the restart), as common.sh's nodes_ok.
nodes_usable() {
    local states
    states=$(sinfo -h -N -o '%t' | sort -u) && [[ -n $states ]] || return 1
    ! grep -qvxE 'idle|mix|alloc|comp' <<<"$states"
}

start() {
    compose start "$@" >/dev/null
    wait_until 120 "$* healthy" healthy "$@" || die "$* did not become healthy"
    if [[ " $* " == *" slurmctld "* ]]; then
        wait_until 120 "the nodes usable" nodes_usable || log "WARNING: nodes not usable: $(sinfo -h -N -o '%N %t' | xargs)"
    fi
}

user() {
    local name entry uid gid home shell group
    local -a groups
    for name in "$@"; do
        [[ $name =~ ^[a-z_][a-z0-9_-]*$ ]] || die "not a user name: $name"
        entry=$(getent passwd "$name") || die "no user $name on this host"
        IFS=: read -r _ _ uid gid _ home shell <<<"$entry"
        groups=("$(getent group "$gid" | cut -d: -f1):$gid")
        for group in $(id -G "$name"); do
            [[ $group == "$gid" ]] || groups+=("$(getent group "$group" | cut -d: -f1):$group")
        done
        for service in slurmctld c1 c2; do
            compose exec -T "$service" /opt/ucloud-slurm-provider/deploy/docker/entrypoint.sh user \
                "$name" "$uid" "$home" "$shell" "${groups[@]}"
        done
        log "user $name ($uid) on slurmctld, c1, c2"
    done
}

(($# >= 2)) || usage
if [[ $1 == user ]]; then
    shift
    user "$@"
    exit
fi
case $1 in
    slurmctld | slurmdbd) services=("$1") ;;
    slurmd) services=(c1 c2) ;;
    mariadbd) services=(mariadb) ;;
    *) usage ;;
esac
case $2 in
    stop) compose stop "${services[@]}" >/dev/null ;;
    start) start "${services[@]}" ;;
    restart) compose stop "${services[@]}" >/dev/null && start "${services[@]}" ;;
    freeze) compose pause "${services[@]}" >/dev/null ;;
    thaw) compose unpause "${services[@]}" >/dev/null ;;
    *) usage ;;
esac
log "${services[*]}: $2"
