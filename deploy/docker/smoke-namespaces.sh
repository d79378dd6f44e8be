#!/usr/bin/env bash
# Smoke test of the compose cluster's roles WITHOUT Docker: every service of compose.yaml runs
# entrypoint.sh with its role on this one host, each in its own mount and UTS namespace (its own
# host name, /etc/hosts and $SLURM_LOCAL_DIR; the shared volume is a directory), with one loopback
# address per "container" (127.0.0.2 mariadb ... 127.0.0.10 provider). Then a job is created through
# dev-core and the script waits until the stand-in Core has received SUCCESS for it, and stops
# everything (SIGTERM to each role, as "docker compose down" does).
#
#   smoke-namespaces.sh [--keep | --stop]    --keep: leave it running; --stop: stop a kept run
#
# Root only (unshare, mount). Needs the Debian packages (deploy/local-slurm/install-packages.sh) and
# .venv (deploy/bootstrap.sh). About 30 s. Own directory and ports (7417-7419, 3807, 8080 and 8889 on
# 127.0.0.9/.10), so it runs beside the local and test clusters. What it does not cover: the images,
# compose itself, Docker's DNS. srun steps across nodes fail here (a shared loopback makes srun's
# callback address 127.0.0.1); in Docker every container has its own address.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
S=${SMOKE_DIR:-/tmp/ucloud-slurm-docker-smoke}
BIN=$REPO/.venv/bin
mode=${1:-run}
case $mode in
    run | --keep | --stop) ;;
    *) echo "usage: smoke-namespaces.sh [--keep | --stop]" >&2; exit 2 ;;
esac
((EUID == 0)) || { echo "smoke-namespaces: run as root" >&2; exit 1; }
[[ -x $BIN/ucloud-slurm-provider ]] || { echo "smoke-namespaces: run deploy/bootstrap.sh first" >&2; exit 1; }

# The settings of compose.yaml's x-slurm-env, with this run's paths and ports.
export SLURM_LOCAL_DIR=$S/local SLURM_LOCAL_CLUSTER=uclouddocker SLURM_DOCKER_SHARED=$S/cluster
export SLURM_DOCKER_NODES="c1 c2" SLURM_DOCKER_CTLD_HOST=slurmctld SLURM_DOCKER_DBD_HOST=slurmdbd
export SLURM_DOCKER_DB_HOST=mariadb SLURM_DOCKER_DB_BIND=127.0.0.2
export SLURM_LOCAL_CTLD_PORT=7417 SLURM_LOCAL_SLURMD_PORT=7418 SLURM_LOCAL_DBD_PORT=7419 SLURM_LOCAL_DB_PORT=3807
export PATH=$BIN:$PATH:/usr/sbin:/sbin
# Started in this order, stopped in the reverse one.
ROLES=(mariadb slurmdbd slurmctld c1 c2 dev-core provider)

say() { printf '[smoke +%ss] %s\n' "$SECONDS" "$*" >&2; }

# in_ns HOST PIDFILE CMD...: CMD in a new mount+UTS namespace that looks like container HOST: host
# name HOST, $S/hosts as /etc/hosts, $S/roles/HOST as $SLURM_LOCAL_DIR, the shared directory
# read-only except for init (as compose.yaml mounts the cluster volume). PIDFILE ("" = none) gets
# the pid CMD runs as.
in_ns() {
    local host=$1 pidfile=$2
    shift 2
    mkdir -p "$S/roles/$host"
    # shellcheck disable=SC2016  # expanded by the inner bash
    unshare --mount --uts --fork -- bash -c \
        'mount --bind "$1" /etc/hosts && mount --bind "$2" "$SLURM_LOCAL_DIR" && hostname "$3" &&
         { [ "$3" = init ] || mount --bind -o ro "$SLURM_DOCKER_SHARED" "$SLURM_DOCKER_SHARED"; } &&
         { [ -z "$4" ] || echo $$ >"$4"; } && shift 4 && exec "$@"' \
        in_ns "$S/hosts" "$S/roles/$host" "$host" "$pidfile" "$@"
}
entry() { local host=$1; shift; in_ns "$host" "" "$HERE/entrypoint.sh" "$@"; }
# start HOST ROLE [ARGS...]: a long-running role in the background, output in $S/HOST.out.
start() {
    local host=$1
    shift
    in_ns "$host" "$S/$host.pid" "$HERE/entrypoint.sh" "$@" >"$S/$host.out" 2>&1 &
}
# healthy HOST ROLE: wait until "entrypoint.sh health ROLE" passes in HOST's namespace.
healthy() {
    local i
    for ((i = 0; i < 240; i++)); do
        entry "$1" health "$2" && return 0
        sleep 0.5
    done
    say "$1 did not become healthy; its output:"
    tail -n 30 "$S/$1.out" >&2
    return 1
}

# SIGTERM to each role (entrypoint.sh, or what a client role exec'd), newest first, waiting for each
# to exit; then to any daemon still named in a role's pid files (a client role's munged).
stop_all() {
    local i n f pid comm
    for ((i = ${#ROLES[@]} - 1; i >= 0; i--)); do
        f=$S/${ROLES[$i]}.pid
        [[ -f $f ]] || continue
        read -r pid <"$f" || continue
        rm -f "$f"
        kill -TERM "$pid" 2>/dev/null || continue
        for ((n = 0; n < 300; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    for f in "$S"/roles/*/run/*.pid; do
        [[ -e $f ]] || continue
        read -r pid <"$f" || continue
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        case $comm in munged | slurm* | mariadbd) kill -TERM "$pid" 2>/dev/null || true ;; esac
    done
}

if [[ -d $S ]]; then
    stop_all
    say "stopped what an earlier run left in $S"
fi
[[ $mode == --stop ]] && exit 0
rm -rf "$S"
mkdir -p "$S/local" "$S/cluster" "$S/roles" "$S/keys" "$S/jobs" "$S/state"
cat >"$S/hosts" <<HOSTS
127.0.0.1 localhost
127.0.0.2 mariadb
127.0.0.3 slurmdbd
127.0.0.4 slurmctld
127.0.0.5 c1
127.0.0.6 c2
127.0.0.7 client
127.0.0.8 init
127.0.0.9 dev-core
127.0.0.10 provider
HOSTS
# provider.toml with this run's addresses and paths.
sed -e "s|http://dev-core:8080|http://127.0.0.9:8080|" -e "s|/var/lib/ucloud-keys|$S/keys|" \
    -e "s|/cluster/etc|$S/cluster/etc|" -e "s|/var/lib/ucloud-slurm-provider/|$S/state/|" \
    -e "s|/srv/ucloud-jobs|$S/jobs|" -e "s|/opt/ucloud-slurm-provider|$REPO|" \
    -e 's|^host = "0.0.0.0"|host = "127.0.0.10"|' "$HERE/provider.toml" >"$S/provider.toml"
[[ $mode == --keep ]] || trap 'stop_all; say "stopped (logs: $S)"' EXIT

entry init init
start mariadb mariadb && healthy mariadb mariadb
start slurmdbd slurmdbd && healthy slurmdbd slurmdbd
start slurmctld slurmctld && healthy slurmctld slurmctld
start c1 slurmd && start c2 slurmd && healthy c1 slurmd && healthy c2 slurmd
start dev-core dev-core --dir "$S/keys" --host 127.0.0.9 --port 8080 --record "$S/core-updates.jsonl"
for ((i = 0; i < 100; i++)); do [[ -s $S/keys/refresh_token ]] && break; sleep 0.1; done
start provider client ucloud-slurm-provider serve --config "$S/provider.toml"
for ((i = 0; i < 100; i++)); do
    python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.10:8889/healthz", timeout=1)' 2>/dev/null && break
    sleep 0.2
done
say "cluster up: $(entry client client sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ')"

created=$(entry client client ucloud-slurm-provider dev-core create --dir "$S/keys" \
    --provider-url http://127.0.0.10:8889 --app hello/1.0 --param greeting=Docker --int-param seconds=2 2>/dev/null)
say "$created"
job=$(sed -n 's/^job \([0-9]*\): 200 .*/\1/p' <<<"$created")
[[ -n $job ]] || { say "FAILED: the create was refused"; exit 1; }
success() { grep "\"id\": *\"$job\"" "$S/core-updates.jsonl" 2>/dev/null | grep -q '"state": *"SUCCESS"'; }
for ((i = 0; i < 120; i++)); do
    success && break
    sleep 0.5
done
success || { say "FAILED: Core did not receive SUCCESS for job $job; see $S/*.out"; exit 1; }
out=$(cat "$S/jobs/$job/stdout.txt")
[[ $out == *"Hello, Docker! UCloud job $job"*" on c"[12]* ]] || { say "FAILED: unexpected job output: $out"; exit 1; }
say "OK: job $job ran on a compute node (${out%%$'\n'*}); Core received SUCCESS"
[[ $mode == --keep ]] && say "left running; stop with: $0 --stop"
