#!/usr/bin/env bash
# Entrypoint of the compose cluster's containers (deploy/docker/compose.yaml).
# One role per container; every role uses the settings, config rendering,
# start functions and readiness checks of deploy/local-slurm/common.sh, so the
# dockerized cluster and the local single-host cluster stay one design.
#
#   entrypoint.sh init                 render slurm.conf/slurmdbd.conf and the munge key into the shared volume, exit
#   entrypoint.sh mariadb              MariaDB for slurmdbd (reachable from the compose network)
#   entrypoint.sh slurmdbd             munged + slurmdbd; registers cluster, account and root's association
#   entrypoint.sh slurmctld            munged + slurmctld
#   entrypoint.sh slurmd               munged + the slurmd of node $SLURM_DOCKER_NODE (default: the host name)
#   entrypoint.sh client [CMD ARGS...] munged, wait for slurmctld, then exec CMD (a shell if none)
#   entrypoint.sh dev-core [ARGS...]   exec the stand-in UCloud/Core (no Slurm)
#   entrypoint.sh health ROLE          exit 0 if ROLE's daemon serves (for compose healthchecks)
#
# Long-running roles stay in the foreground until SIGTERM (then they stop
# their daemons with common.sh's stop_daemons) or until one of their daemons
# dies (then they exit 1 so the restart policy applies).
#
# Settings: the SLURM_LOCAL_* variables of deploy/local-slurm/README.md, the
# same in every container (compose.yaml sets them once), plus:
#   SLURM_DOCKER_SHARED     /cluster   shared volume: etc/slurm.conf, etc/slurmdbd.conf, munge/munge.key, env.sh
#   SLURM_DOCKER_NODES      "c1 c2"    compute node names = their host names
#   SLURM_DOCKER_NODE       $(hostname -s)  this container's node (slurmd role)
#   SLURM_DOCKER_CTLD_HOST  slurmctld  host name of slurmctld (SlurmctldHost)
#   SLURM_DOCKER_DBD_HOST   slurmdbd   host name of slurmdbd (AccountingStorageHost, DbdHost, DbdAddr)
#   SLURM_DOCKER_DB_HOST    mariadb    host name of MariaDB (StorageHost)
#   SLURM_DOCKER_DB_BIND    0.0.0.0    MariaDB's listen address in its container
#
# common.sh is written for one host (127.0.0.1 everywhere, nodes node1..N).
# The places below marked WORKAROUND adapt it without editing it; each names
# the small common.sh change that would make it unnecessary (see README.md).
set -euo pipefail
LOG_TAG=${LOG_TAG:-docker-${1:-entrypoint}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOCAL_SLURM=${LOCAL_SLURM:-$(cd "$HERE/../local-slurm" && pwd)}
# shellcheck source=SCRIPTDIR/../local-slurm/common.sh
source "$LOCAL_SLURM/common.sh"

SHARED=${SLURM_DOCKER_SHARED:-/cluster}
NODES=${SLURM_DOCKER_NODES:-c1 c2}
CTLD_HOST=${SLURM_DOCKER_CTLD_HOST:-slurmctld}
DBD_HOST=${SLURM_DOCKER_DBD_HOST:-slurmdbd}
DB_HOST=${SLURM_DOCKER_DB_HOST:-mariadb}
export SLURM_DOCKER_DB_BIND=${SLURM_DOCKER_DB_BIND:-0.0.0.0}
SHARED_KEY=$SHARED/munge/munge.key

# WORKAROUND (common.sh: SLURM_LOCAL_ETC, default $D/etc): the configuration
# lives in the shared volume, everything else under the container's own $D.
ETC=$SHARED/etc
export SLURM_CONF=$ETC/slurm.conf

read -r -a NODE_LIST <<<"$NODES"
SLURM_LOCAL_NODES=${#NODE_LIST[@]}

# WORKAROUND (common.sh: SLURM_LOCAL_NODE_NAMES, default node1..N, and one
# SlurmdPort for all nodes when they are on different hosts): node_names and
# node_port are what render_slurm_conf, make_dirs and start_slurmds iterate
# over. In the slurmd role they list only this container's node.
node_names() { printf '%s\n' "${NODE_LIST[@]}"; }
node_port() { echo "$SLURM_LOCAL_SLURMD_PORT"; }

# WORKAROUND (common.sh: SLURM_LOCAL_CTLD_ADDR, SLURM_LOCAL_DBD_ADDR,
# SLURM_LOCAL_DB_HOST, per-node NodeAddr = node name, all defaulting to
# 127.0.0.1 / SLURM_LOCAL_HOST): the renderers of common.sh are used as they
# are and only the lines that name a host are replaced. Every daemon listens
# on its own host name's address (NoInAddrAny), as start.sh does on a host
# whose name resolves to 127.0.0.1.
eval "local_$(declare -f render_slurm_conf)"
eval "local_$(declare -f render_slurmdbd_conf)"
render_slurm_conf() {
    printf '# Rendered by deploy/docker/entrypoint.sh init with deploy/local-slurm/common.sh.\n'
    local_render_slurm_conf | sed -E \
        -e "s/^SlurmctldHost=.*/SlurmctldHost=$CTLD_HOST/" \
        -e "s/^AccountingStorageHost=.*/AccountingStorageHost=$DBD_HOST/" \
        -e 's/^(CommunicationParameters=.*|# host name does not resolve to 127\.0\.0\.1.*)$/CommunicationParameters=NoInAddrAny,NoCtldInAddrAny/' \
        -e 's/^NodeName=([^ ]+) NodeHostname=[^ ]+ NodeAddr=[^ ]+ /NodeName=\1 NodeHostname=\1 NodeAddr=\1 /'
}
render_slurmdbd_conf() {
    printf '# Rendered by deploy/docker/entrypoint.sh init with deploy/local-slurm/common.sh.\n'
    local_render_slurmdbd_conf | sed -E \
        -e "s/^DbdHost=.*/DbdHost=$DBD_HOST/" \
        -e "s/^DbdAddr=.*/DbdAddr=$DBD_HOST/" \
        -e "s/^StorageHost=.*/StorageHost=$DB_HOST/"
}

# WORKAROUND (common.sh: SLURM_LOCAL_MUNGE_KEY, default $D/munge/munge.key):
# init creates the key once in the shared volume (the same mungekey call as
# start_munged); every other role copies it to $D/munge, where start_munged
# finds it and keeps its seed file private to the container.
create_shared_key() {
    mkdir -p "$SHARED/munge"
    chmod 700 "$SHARED/munge"
    if [[ ! -s $SHARED_KEY ]]; then
        log "creating the cluster's munge key"
        mungekey --create --keyfile="$SHARED_KEY"
    fi
    chmod 600 "$SHARED_KEY"
}
install_shared_key() {
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "munge key in $SHARED (init service)" test -s "$SHARED_KEY" ||
        die "$SHARED_KEY missing: did the init service run?"
    mkdir -p "$D/munge"
    chmod 700 "$D/munge"
    install -m 600 "$SHARED_KEY" "$D/munge/munge.key"
}

wait_for_conf() {
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "$SLURM_CONF (init service)" test -s "$SLURM_CONF" ||
        die "$SLURM_CONF missing: did the init service run?"
}

# Configuration as common.sh renders it must not point at loopback anywhere:
# a new 127.0.0.1 line in common.sh would go unnoticed by the rewrites above.
check_no_loopback() {
    local f bad
    for f in "$ETC/slurm.conf" "$ETC/slurmdbd.conf"; do
        if bad=$(grep -n '127\.0\.0\.1' "$f" | grep -v '^[0-9]*:#'); then
            die "$f still names 127.0.0.1 (common.sh changed?): $bad"
        fi
    done
}

# The log file of a daemon started by common.sh.
logfile_of() {
    case $1 in
        mariadbd) echo "$LOG/mysqld.log" ;;
        *) echo "$LOG/$1.log" ;;
    esac
}

# supervise NAME...: stay in the foreground while every named daemon runs,
# with their log files copied to stdout (so "docker compose logs" shows them).
# SIGTERM/SIGINT stop the daemons (in the given order) and exit 0; a daemon
# that dies on its own makes the container exit 1.
supervise() {
    local -a names=("$@") logs=()
    local n tail_pid
    for n in "${names[@]}"; do
        logs+=("$(logfile_of "$n")")
    done
    tail -n +1 -F "${logs[@]}" 2>/dev/null &
    tail_pid=$!
    # shellcheck disable=SC2317  # invoked by the trap
    on_term() {
        local n
        for n in "${names[@]}"; do
            stop_daemons "$n"
        done
        kill "$tail_pid" 2>/dev/null || true
        exit 0
    }
    trap on_term TERM INT
    log "up: ${names[*]}"
    while :; do
        for n in "${names[@]}"; do
            if ! daemon_running "$n"; then
                log "$n is no longer running; see $(logfile_of "$n")"
                kill "$tail_pid" 2>/dev/null || true
                exit 1
            fi
        done
        # sleep in the background so that the trap runs at once
        sleep 2 &
        wait $! || true
    done
}

role_init() {
    mkdir -p "$ETC"
    create_shared_key
    render_configs
    check_no_loopback
    write_if_changed "$SHARED/env.sh" 644 <<ENV || true
# Source this file to use the compose cluster (written by deploy/docker/entrypoint.sh init).
export SLURM_CONF=$SLURM_CONF
export SLURM_LOCAL_CLUSTER=$SLURM_LOCAL_CLUSTER
ENV
    log "cluster $SLURM_LOCAL_CLUSTER: $SLURM_CONF with nodes ${NODE_LIST[*]}"
}

role_mariadb() {
    # WORKAROUND (common.sh: SLURM_LOCAL_DB_BIND, default 127.0.0.1, and
    # SLURM_LOCAL_DB_CLIENTS, default "127.0.0.1 localhost"): start_mariadbd
    # binds to 127.0.0.1. The mariadbd on PATH here is a shim that appends
    # --bind-address=$SLURM_DOCKER_DB_BIND (the last one wins), and the slurm
    # user is granted access from the other containers too.
    PATH=$HERE/shims:$PATH
    make_dirs
    start_mariadbd
    mariadb --no-defaults -S "$MYSQL_SOCKET" -uroot <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'%';
SQL
    supervise mariadbd
}

role_slurmdbd() {
    wait_for_conf
    install_shared_key
    make_dirs
    start_munged
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "MariaDB on $DB_HOST:$SLURM_LOCAL_DB_PORT" \
        bash -c "exec 3<>/dev/tcp/$DB_HOST/$SLURM_LOCAL_DB_PORT" || die "MariaDB on $DB_HOST is not reachable"
    start_slurmdbd
    ensure_accounting
    supervise slurmdbd munged
}

role_slurmctld() {
    wait_for_conf
    install_shared_key
    make_dirs
    start_munged
    start_slurmctld
    supervise slurmctld munged
}

role_slurmd() {
    local node=${SLURM_DOCKER_NODE:-$(hostname -s)}
    [[ " $NODES " == *" $node "* ]] || die "node $node is not in SLURM_DOCKER_NODES ($NODES)"
    NODE_LIST=("$node")
    wait_for_conf
    install_shared_key
    make_dirs
    start_munged
    start_slurmds
    supervise "slurmd-$node" munged
}

role_client() {
    wait_for_conf
    install_shared_key
    make_dirs
    start_munged
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "scontrol ping" ctld_ok || log "WARNING: slurmctld does not answer yet"
    (($#)) || set -- bash
    log "exec $*"
    exec "$@"
}

role_dev_core() {
    exec ucloud-slurm-provider dev-core serve "$@"
}

# health ROLE: the readiness checks of common.sh, for compose healthchecks.
role_health() {
    case ${1:-} in
        init) test -s "$SLURM_CONF" && test -s "$SHARED_KEY" ;;
        mariadb) mariadb_ok ;;
        slurmdbd) cluster_listed ;;
        slurmctld) ctld_ok ;;
        slurmd)
            local node=${SLURM_DOCKER_NODE:-$(hostname -s)}
            daemon_running "slurmd-$node"
            ;;
        client) munge_ok && ctld_ok ;;
        *) die "health: unknown role ${1:-} (init, mariadb, slurmdbd, slurmctld, slurmd, client)" ;;
    esac
}

role=${1:-}
shift || true
case $role in
    init) role_init ;;
    mariadb) role_mariadb ;;
    slurmdbd) role_slurmdbd ;;
    slurmctld) role_slurmctld ;;
    slurmd) role_slurmd ;;
    client) role_client "$@" ;;
    dev-core) role_dev_core "$@" ;;
    health) role_health "$@" >/dev/null 2>&1 ;;
    -h | --help | "")
        sed -n '2,30p' "$0"
        exit 0
        ;;
    *) die "unknown role: $role (see entrypoint.sh --help)" ;;
esac
