# shellcheck shell=bash
# Shared settings and helpers for start.sh, stop.sh, ctl.sh and
# capture-outputs.sh. Sourced, never run. See README.md beside this file.

# ---------------------------------------------------------------------------
# Settings (environment variables with defaults)
# ---------------------------------------------------------------------------
SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/tmp/ucloud-slurm-local}
SLURM_LOCAL_NODES=${SLURM_LOCAL_NODES:-1}
SLURM_LOCAL_CPUS=${SLURM_LOCAL_CPUS:-4}
SLURM_LOCAL_MEMORY=${SLURM_LOCAL_MEMORY:-8000}
SLURM_LOCAL_OVERSUBSCRIBE=${SLURM_LOCAL_OVERSUBSCRIBE:-8}
SLURM_LOCAL_MIN_JOB_AGE=${SLURM_LOCAL_MIN_JOB_AGE:-300}
SLURM_LOCAL_SLURMD_TIMEOUT=${SLURM_LOCAL_SLURMD_TIMEOUT:-30}
SLURM_LOCAL_KILL_WAIT=${SLURM_LOCAL_KILL_WAIT:-5}
SLURM_LOCAL_SCHED_INTERVAL=${SLURM_LOCAL_SCHED_INTERVAL:-2}
SLURM_LOCAL_HOST=${SLURM_LOCAL_HOST:-localhost}
SLURM_LOCAL_CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}
SLURM_LOCAL_SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
SLURM_LOCAL_DBD_PORT=${SLURM_LOCAL_DBD_PORT:-6819}
SLURM_LOCAL_DB_PORT=${SLURM_LOCAL_DB_PORT:-3307}
SLURM_LOCAL_CLUSTER=${SLURM_LOCAL_CLUSTER:-ucloudlocal}
SLURM_LOCAL_ACCOUNT=${SLURM_LOCAL_ACCOUNT:-ucloud}
SLURM_LOCAL_ENFORCE=${SLURM_LOCAL_ENFORCE:-0}
SLURM_LOCAL_ENFORCE_PART_LIMITS=${SLURM_LOCAL_ENFORCE_PART_LIMITS:-ALL}
# 1: memory is a consumable resource (CR_Core_Memory, DefMemPerCPU) and jobs
# over their --mem are killed by jobacct_gather (OverMemoryKill); there is no
# cgroup enforcement in this setup.
SLURM_LOCAL_MEMORY_ENFORCE=${SLURM_LOCAL_MEMORY_ENFORCE:-0}
SLURM_LOCAL_DEF_MEM_PER_CPU=${SLURM_LOCAL_DEF_MEM_PER_CPU:-100}
# Seconds to wait for a daemon to come up / to exit after SIGTERM.
SLURM_LOCAL_START_TIMEOUT=${SLURM_LOCAL_START_TIMEOUT:-60}
SLURM_LOCAL_STOP_TIMEOUT=${SLURM_LOCAL_STOP_TIMEOUT:-20}
# Where each part lives. On one host (the default) everything is on 127.0.0.1 and the nodes are
# node1..N, each slurmd on a port of its own. The compose cluster (deploy/docker) gives every daemon
# a host of its own: SLURM_LOCAL_NODE_NAMES names the nodes, which are then also their host names
# (one SlurmdPort for all), and the *_ADDR / *_HOST settings name where slurmctld, slurmdbd and
# MariaDB are. An empty SLURM_LOCAL_CTLD_ADDR means "resolve SLURM_LOCAL_CTLD_HOST".
SLURM_LOCAL_NODE_NAMES=${SLURM_LOCAL_NODE_NAMES:-}
SLURM_LOCAL_CTLD_HOST=${SLURM_LOCAL_CTLD_HOST:-$SLURM_LOCAL_HOST}
SLURM_LOCAL_CTLD_ADDR=${SLURM_LOCAL_CTLD_ADDR-127.0.0.1}
SLURM_LOCAL_DBD_HOST=${SLURM_LOCAL_DBD_HOST:-$SLURM_LOCAL_HOST}
SLURM_LOCAL_DBD_ADDR=${SLURM_LOCAL_DBD_ADDR:-127.0.0.1}
SLURM_LOCAL_DB_HOST=${SLURM_LOCAL_DB_HOST:-127.0.0.1}
# MariaDB's listen address; any other than 127.0.0.1 lets slurmdbd log in from any host.
SLURM_LOCAL_DB_BIND=${SLURM_LOCAL_DB_BIND:-127.0.0.1}

D=$SLURM_LOCAL_DIR
ETC=${SLURM_LOCAL_ETC:-$D/etc}
# The cluster's munge key; created here if missing.
MUNGE_KEY=${SLURM_LOCAL_MUNGE_KEY:-$D/munge/munge.key}
RUN=$D/run
LOG=$D/log
MUNGE_SOCKET=$RUN/munge.socket
MYSQL_SOCKET=$RUN/mysqld.sock
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurmlocalpw

# Every daemon and client call below finds the cluster through SLURM_CONF.
export SLURM_CONF=$ETC/slurm.conf
# Daemons live in /usr/sbin, which a non-login root shell may lack.
case ":$PATH:" in
    *:/usr/sbin:*) ;;
    *) PATH=$PATH:/usr/sbin:/sbin ;;
esac
export PATH

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
_T0=${EPOCHREALTIME/./}
# log MESSAGE: "[tag +S.ss] message" on stderr (seconds since the script began).
log() {
    local us=$((${EPOCHREALTIME/./} - _T0))
    printf '[%s +%d.%02d] %s\n' "${LOG_TAG:-slurm-local}" $((us / 1000000)) $((us % 1000000 / 10000)) "$*" >&2
}
die() { log "ERROR: $*"; exit 1; }

# Node names are node1..nodeN (or SLURM_LOCAL_NODE_NAMES); node1 listens on SLURM_LOCAL_SLURMD_PORT,
# nodeK (K>=2) on SLURM_LOCAL_SLURMD_PORT+10+K; named nodes, each on a host of its own, all on
# SLURM_LOCAL_SLURMD_PORT.
node_names() {
    local i
    if [[ -n $SLURM_LOCAL_NODE_NAMES ]]; then
        local -a names
        read -r -a names <<<"$SLURM_LOCAL_NODE_NAMES"
        printf '%s\n' "${names[@]}"
        return
    fi
    for ((i = 1; i <= SLURM_LOCAL_NODES; i++)); do
        printf 'node%d\n' "$i"
    done
}
node_count() { node_names | wc -l; }
node_port() {
    local k=${1#node}
    if [[ -n $SLURM_LOCAL_NODE_NAMES ]] || ((k == 1)); then
        echo "$SLURM_LOCAL_SLURMD_PORT"
    else
        echo $((SLURM_LOCAL_SLURMD_PORT + 10 + k))
    fi
}

# pid file of a daemon: munged, mariadbd, slurmdbd, slurmctld, slurmd-<node>
pidfile_of() {
    case $1 in
        mariadbd) echo "$RUN/mysqld.pid" ;;
        *) echo "$RUN/$1.pid" ;;
    esac
}

# The process name (/proc/PID/comm) the daemon must have, so a pid file whose
# pid was reused by an unrelated process is never trusted. Debian 13 installs
# slurmctld/slurmd as alternatives of slurmctld-wlm/slurmd-wlm.
comm_matches() {
    local want=$1 comm=$2
    case $want in
        slurmd-*) want=slurmd ;;
    esac
    [[ $comm == "$want" || $comm == "$want-wlm" ]]
}

# Print the pid of a daemon we started if it is alive; return 1 otherwise.
daemon_pid() {
    local name=$1 pf pid=""
    pf=$(pidfile_of "$name")
    # The daemon may remove its pid file at any moment while it exits.
    read -r pid 2>/dev/null <"$pf" || [[ -n ${pid:-} ]] || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    pid_alive "$pid" "$name" || return 1
    echo "$pid"
}

# pid_alive PID NAME: PID is a live (non-zombie) process with NAME's comm.
# Daemons delete their pid file as soon as they begin to shut down, so stop
# waits on the pid itself, not on the pid file.
pid_alive() {
    local pid=$1 name=$2 comm
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    comm_matches "$name" "$comm" || return 1
    # Alive while any thread is not a zombie: when the main thread of a
    # multi-threaded daemon exits first, /proc/PID/status shows Z while the
    # other threads still finish the shutdown.
    local t
    for t in "/proc/$pid/task/"*/status; do
        if ! grep -q '^State:[[:space:]]*Z' "$t" 2>/dev/null && [[ -e $t ]]; then
            return 0
        fi
    done
    return 1
}

daemon_running() { daemon_pid "$1" >/dev/null; }

# wait_until TIMEOUT_SECONDS DESCRIPTION CMD [ARGS...]: poll CMD every 0.1 s.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for: $what"
            return 1
        fi
        sleep 0.1
    done
}

# stop_daemons NAME...: SIGTERM every named daemon that is running, wait for
# all of their pids to exit, SIGKILL the ones still alive after
# SLURM_LOCAL_STOP_TIMEOUT. Only pids from our own pid files are signalled.
stop_daemons() {
    local name pid
    local -a pids=() names=()
    for name in "$@"; do
        if pid=$(daemon_pid "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            # A daemon frozen by "ctl.sh ... freeze" must run to see SIGTERM.
            kill -CONT "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        fi
    done
    ((${#pids[@]})) || return 0
    log "stopping ${names[*]}"
    local deadline=$((SECONDS + SLURM_LOCAL_STOP_TIMEOUT)) alive i
    while :; do
        alive=0
        for i in "${!pids[@]}"; do
            if pid_alive "${pids[$i]}" "${names[$i]}"; then
                alive=1
            fi
        done
        ((alive)) || break
        if ((SECONDS >= deadline)); then
            for i in "${!pids[@]}"; do
                if pid_alive "${pids[$i]}" "${names[$i]}"; then
                    log "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM; sending SIGKILL"
                    kill -KILL "${pids[$i]}" 2>/dev/null || true
                fi
            done
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        rm -f "$(pidfile_of "${names[$i]}")"
    done
}

# Run a command with stdin from /dev/null and output appended to a log file,
# so a started daemon never holds the caller's pipes open.
# fd 9 (the lock, see take_lock) is closed so that a daemon never inherits it.
detached() {
    local logfile=$1
    shift
    setsid "$@" </dev/null >>"$logfile" 2>&1 9>&-
}

# The Slurm version as MAJOR.MINOR (e.g. 22.05, 24.11).
slurm_version() {
    local v
    v=$(sinfo --version 2>/dev/null) || v=$(scontrol --version)
    v=${v#slurm* }
    echo "${v%.*}"
}

# version_ge A B: true if MAJOR.MINOR A >= B.
version_ge() {
    local a=$1 b=$2
    local am=${a%%.*} an=${a#*.} bm=${b%%.*} bn=${b#*.}
    ((10#$am > 10#$bm || (10#$am == 10#$bm && 10#$an >= 10#$bn)))
}

# Take an exclusive lock on the cluster directory so start/stop/ctl calls
# from parallel tests do not interleave.
# Waits at most SLURM_LOCAL_LOCK_TIMEOUT seconds, then goes on with a
# warning rather than hanging forever.
take_lock() {
    mkdir -p "$D"
    exec 9>"$D/.lock"
    flock -n 9 && return 0
    if ! flock -w "${SLURM_LOCAL_LOCK_TIMEOUT:-60}" 9; then
        log "WARNING: $D/.lock still held after ${SLURM_LOCAL_LOCK_TIMEOUT:-60}s; going on without it"
    fi
}

# ---------------------------------------------------------------------------
# Readiness checks
# ---------------------------------------------------------------------------
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null; }
mariadb_ok() { mariadb-admin --no-defaults -S "$MYSQL_SOCKET" -uroot ping >/dev/null; }
ctld_ok() { scontrol ping | grep -q 'is UP'; }
cluster_listed() {
    sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$SLURM_LOCAL_CLUSTER"
}
dbd_ok() { sacctmgr -n -P show cluster format=cluster >/dev/null; }
# All nodes idle (or mixed/allocated: usable), none down/unknown.
nodes_ok() {
    local out
    out=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
    [[ -n $out ]] || return 1
    local name state n=0
    while read -r name state; do
        case $state in
            idle | mix | alloc | comp) n=$((n + 1)) ;;
            *) return 1 ;;
        esac
    done <<<"$(sort -u <<<"$out")"
    ((n == $(node_count)))
}

# Is something (ours or not) accepting TCP connections on 127.0.0.1:PORT?
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------
# Configuration files
# ---------------------------------------------------------------------------

# write_if_changed FILE MODE: replace FILE with stdin if the content differs;
# returns 0 if it changed.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

# With NoInAddrAny/NoCtldInAddrAny, slurmd and slurmctld listen only on the
# address that gethostname() resolves to (not on 0.0.0.0). That keeps them on
# loopback only if the host name resolves to 127.0.0.1, so it is used only
# then; otherwise (e.g. Debian's "127.0.1.1 host" line) they would listen on
# an address that NodeAddr/SlurmctldHost=127.0.0.1 cannot reach.
hostname_is_loopback() {
    local addr
    addr=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk 'NR == 1 { print $1 }')
    [[ $addr == 127.0.0.1 ]]
}

render_slurm_conf() {
    local enforce="# AccountingStorageEnforce is off (SLURM_LOCAL_ENFORCE=0)" bind memory
    if [[ $SLURM_LOCAL_MEMORY_ENFORCE == 1 ]]; then
        memory="SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$SLURM_LOCAL_DEF_MEM_PER_CPU
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill"
    else
        memory="SelectTypeParameters=CR_Core
JobAcctGatherFrequency=30"
    fi
    if hostname_is_loopback; then
        bind="CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"
    else
        bind="# host name does not resolve to 127.0.0.1: slurmctld/slurmd listen on all addresses"
    fi
    if [[ $SLURM_LOCAL_ENFORCE == 1 ]]; then
        enforce="AccountingStorageEnforce=associations,limits"
    fi
    cat <<CONF
# Generated by deploy/local-slurm/start.sh; edits are overwritten.
ClusterName=$SLURM_LOCAL_CLUSTER
SlurmctldHost=$SLURM_LOCAL_CTLD_HOST${SLURM_LOCAL_CTLD_ADDR:+($SLURM_LOCAL_CTLD_ADDR)}
SlurmctldPort=$SLURM_LOCAL_CTLD_PORT
SlurmdPort=$SLURM_LOCAL_SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$SLURM_LOCAL_DBD_ADDR
AccountingStoragePort=$SLURM_LOCAL_DBD_PORT
# slurmctld->slurmdbd (and sacct/sacctmgr) ignore AuthInfo=socket=... in
# 22.05; AccountingStoragePass is the documented way to name the munge socket.
AccountingStoragePass=$MUNGE_SOCKET
AccountingStoreFlags=job_comment
$enforce
$bind
JobCompType=jobcomp/none
ReturnToService=1
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=$SLURM_LOCAL_SCHED_INTERVAL
SelectType=select/cons_tres
$memory
EnforcePartLimits=$SLURM_LOCAL_ENFORCE_PART_LIMITS
MinJobAge=$SLURM_LOCAL_MIN_JOB_AGE
KillWait=$SLURM_LOCAL_KILL_WAIT
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=$SLURM_LOCAL_SLURMD_TIMEOUT
CONF
    local node host addr
    while read -r node; do
        host=$SLURM_LOCAL_HOST addr=127.0.0.1
        [[ -z $SLURM_LOCAL_NODE_NAMES ]] || host=$node addr=$node
        printf 'NodeName=%s NodeHostname=%s NodeAddr=%s Port=%s CPUs=%s RealMemory=%s State=UNKNOWN\n' \
            "$node" "$host" "$addr" "$(node_port "$node")" "$SLURM_LOCAL_CPUS" "$SLURM_LOCAL_MEMORY"
    done < <(node_names)
    printf 'PartitionName=normal Nodes=ALL Default=YES MaxTime=INFINITE DefaultTime=01:00:00 OverSubscribe=FORCE:%s State=UP\n' \
        "$SLURM_LOCAL_OVERSUBSCRIBE"
    printf 'PartitionName=short Nodes=ALL Default=NO MaxTime=00:10:00 DefaultTime=00:10:00 OverSubscribe=FORCE:%s State=UP\n' \
        "$SLURM_LOCAL_OVERSUBSCRIBE"
}

render_slurmdbd_conf() {
    cat <<CONF
# Generated by deploy/local-slurm/start.sh; edits are overwritten.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$SLURM_LOCAL_DBD_HOST
DbdAddr=$SLURM_LOCAL_DBD_ADDR
DbdPort=$SLURM_LOCAL_DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=$SLURM_LOCAL_DB_HOST
StoragePort=$SLURM_LOCAL_DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
CONF
}

# Writes slurm.conf, slurmdbd.conf (mode 600, slurmdbd insists) and, on
# Slurm >= 24.05, a cgroup.conf that turns cgroup support off: newer slurmd
# initialises a cgroup plugin at start even with proctrack/linuxproc and
# task/none, and "disabled" only exists from 24.05 on.
render_configs() {
    mkdir -p "$ETC"
    local changed=0
    if render_slurm_conf | write_if_changed "$ETC/slurm.conf" 644; then changed=1; fi
    if render_slurmdbd_conf | write_if_changed "$ETC/slurmdbd.conf" 600; then changed=1; fi
    if version_ge "$(slurm_version)" 24.05; then
        if printf 'CgroupPlugin=disabled\n' | write_if_changed "$ETC/cgroup.conf" 644; then changed=1; fi
    else
        rm -f "$ETC/cgroup.conf"
    fi
    if ((changed)); then
        local name
        for name in slurmctld slurmdbd; do
            if daemon_running "$name"; then
                log "WARNING: config changed while $name is running; run stop.sh then start.sh to apply it"
            fi
        done
    fi
}

write_env_sh() {
    write_if_changed "$D/env.sh" 644 <<ENV || true
# Source this file to use the local Slurm cluster (written by start.sh).
export SLURM_CONF=$SLURM_CONF
export SLURM_LOCAL_DIR=$D
export SLURM_LOCAL_CLUSTER=$SLURM_LOCAL_CLUSTER
ENV
}

# ---------------------------------------------------------------------------
# Starting daemons (each is a no-op if ours is already alive)
# ---------------------------------------------------------------------------
make_dirs() {
    mkdir -p "$ETC" "$LOG" "$RUN" "$D/spool/ctld" "$D/mysql" "$D/munge"
    local node
    while read -r node; do
        mkdir -p "$D/spool/d/$node"
    done < <(node_names)
    # munged wants its socket dir world-executable and its key dir private.
    chmod 755 "$D" "$RUN"
    chmod 700 "$D/munge"
}

ensure_munge_key() {
    [[ -s $MUNGE_KEY ]] && return 0
    mkdir -p "$(dirname "$MUNGE_KEY")"
    chmod 700 "$(dirname "$MUNGE_KEY")"
    log "creating the munge key $MUNGE_KEY"
    mungekey --create --keyfile="$MUNGE_KEY"
    chmod 600 "$MUNGE_KEY"
}

start_munged() {
    daemon_running munged && return 0
    ensure_munge_key
    rm -f "$(pidfile_of munged)"
    log "starting munged"
    detached "$LOG/munged.stdout" munged --key-file="$MUNGE_KEY" \
        --socket="$MUNGE_SOCKET" --pid-file="$(pidfile_of munged)" \
        --log-file="$LOG/munged.log" --seed-file="$D/munge/munged.seed" \
        --num-threads=10 --force
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "munged" munge_ok
}

start_mariadbd() {
    daemon_running mariadbd && return 0
    if port_busy "$SLURM_LOCAL_DB_PORT"; then
        die "port $SLURM_LOCAL_DB_PORT is in use by a process this cluster did not start (set SLURM_LOCAL_DB_PORT)"
    fi
    if [[ ! -d $D/mysql/data/mysql ]]; then
        log "initialising MariaDB data directory"
        mariadb-install-db --no-defaults --user=root --datadir="$D/mysql/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$LOG/mysqld-install.log" 2>&1 || die "mariadb-install-db failed, see $LOG/mysqld-install.log"
    fi
    rm -f "$(pidfile_of mariadbd)"
    log "starting mariadbd on $SLURM_LOCAL_DB_BIND:$SLURM_LOCAL_DB_PORT"
    # mariadbd does not daemonize: run it in a background subshell that execs
    # it, so no bash process of ours stays around as its parent.
    (exec setsid mariadbd --no-defaults --user=root \
        --datadir="$D/mysql/data" --socket="$MYSQL_SOCKET" \
        --pid-file="$(pidfile_of mariadbd)" --bind-address="$SLURM_LOCAL_DB_BIND" \
        --port="$SLURM_LOCAL_DB_PORT" --skip-name-resolve --skip-log-bin \
        --log-error="$LOG/mysqld.log" --innodb-buffer-pool-size=512M \
        --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        --innodb-flush-log-at-trx-commit=2 \
        </dev/null >>"$LOG/mysqld.stderr" 2>&1 9>&-) &
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "mariadbd" mariadb_ok
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "mariadbd pid file" daemon_running mariadbd
    local client clients="127.0.0.1 localhost"
    [[ $SLURM_LOCAL_DB_BIND == 127.0.0.1 ]] || clients="$clients %"
    {
        echo "CREATE DATABASE IF NOT EXISTS $DB_NAME;"
        for client in $clients; do
            echo "CREATE USER IF NOT EXISTS '$DB_USER'@'$client' IDENTIFIED BY '$DB_PASS';"
            echo "GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'$client';"
        done
    } | mariadb --no-defaults -S "$MYSQL_SOCKET" -uroot
}

start_slurmdbd() {
    daemon_running slurmdbd && return 0
    if port_busy "$SLURM_LOCAL_DBD_PORT"; then
        die "port $SLURM_LOCAL_DBD_PORT is in use by a process this cluster did not start (set SLURM_LOCAL_DBD_PORT)"
    fi
    rm -f "$(pidfile_of slurmdbd)"
    log "starting slurmdbd on port $SLURM_LOCAL_DBD_PORT"
    # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF.
    detached "$LOG/slurmdbd.stdout" slurmdbd
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "slurmdbd pid file" daemon_running slurmdbd ||
        die "slurmdbd did not start, see $LOG/slurmdbd.log"
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "slurmdbd answering sacctmgr" dbd_ok ||
        die "slurmdbd does not answer, see $LOG/slurmdbd.log"
}

# Cluster, account and root's association to it. Idempotent: one sacctmgr
# query when everything is there, plus one batched sacctmgr (commands on
# stdin) for whatever is missing.
ensure_accounting() {
    local assocs c=$SLURM_LOCAL_CLUSTER a=$SLURM_LOCAL_ACCOUNT
    local -a cmds=()
    assocs=$(sacctmgr -n -P show assoc format=cluster,account,user)
    if ! grep -q "^$c|" <<<"$assocs"; then
        cmds+=("add cluster $c")
    fi
    if ! grep -qx "$c|$a|" <<<"$assocs"; then
        cmds+=("add account $a cluster=$c description=local-test organization=ucloud")
    fi
    if ! grep -qx "$c|$a|root" <<<"$assocs"; then
        cmds+=("add user root account=$a cluster=$c")
    fi
    ((${#cmds[@]})) || return 0
    log "sacctmgr: ${cmds[*]}"
    printf '%s\n' "${cmds[@]}" | sacctmgr -i >>"$LOG/sacctmgr.log" 2>&1 ||
        die "sacctmgr failed, see $LOG/sacctmgr.log"
}

start_slurmctld() {
    daemon_running slurmctld && return 0
    if port_busy "$SLURM_LOCAL_CTLD_PORT"; then
        die "port $SLURM_LOCAL_CTLD_PORT is in use by a process this cluster did not start (set SLURM_LOCAL_CTLD_PORT)"
    fi
    rm -f "$(pidfile_of slurmctld)"
    log "starting slurmctld on port $SLURM_LOCAL_CTLD_PORT"
    detached "$LOG/slurmctld.stdout" slurmctld
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "slurmctld pid file" daemon_running slurmctld ||
        die "slurmctld did not start, see $LOG/slurmctld.log"
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "scontrol ping" ctld_ok ||
        die "slurmctld does not answer, see $LOG/slurmctld.log"
}

start_slurmds() {
    local node port
    while read -r node; do
        daemon_running "slurmd-$node" && continue
        port=$(node_port "$node")
        if port_busy "$port"; then
            die "port $port is in use by a process this cluster did not start (node $node)"
        fi
        rm -f "$(pidfile_of "slurmd-$node")"
        mkdir -p "$D/spool/d/$node"
        log "starting slurmd $node on port $port"
        detached "$LOG/slurmd-$node.stdout" slurmd -N "$node"
    done < <(node_names)
    while read -r node; do
        wait_until "$SLURM_LOCAL_START_TIMEOUT" "slurmd $node pid file" daemon_running "slurmd-$node" ||
            die "slurmd $node did not start, see $LOG/slurmd-$node.log"
    done < <(node_names)
}

# pid-file names of every slurmd we may have started (also nodes beyond the
# current SLURM_LOCAL_NODES from an earlier start).
slurmd_names() {
    local f
    for f in "$RUN"/slurmd-*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/}
        echo "${f%.pid}"
    done
}

# ---------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------

# Cancel every job and wait until none is running or completing (slurmstepd
# outlives a stopped slurmd, so jobs must end while the cluster is whole).
cancel_all_jobs() {
    daemon_running slurmctld || return 0
    ctld_ok 2>/dev/null || return 0
    local -a ids
    mapfile -t ids < <(squeue -h -o '%A' 2>/dev/null | sort -u)
    if ((${#ids[@]})); then
        log "cancelling ${#ids[@]} job(s)"
        scancel "${ids[@]}" 2>/dev/null || true
    fi
    # Without a live slurmd the jobs cannot end; do not wait for them then.
    local n any=0
    while read -r n; do
        daemon_running "$n" && any=1
    done < <(slurmd_names)
    if ((any)); then
        wait_until $((SLURM_LOCAL_KILL_WAIT + 30)) "jobs to end" no_active_jobs || true
    fi
}
no_active_jobs() {
    local out
    out=$(squeue -h -t running,completing,configuring,suspended,stage_out -o '%A') || return 1
    [[ -z $out ]]
}

# Processes of this cluster's jobs that outlived their slurmd (normally none:
# jobs end while the cluster is whole; this is the safety net for a slurmd
# that died). They are slurmstepd processes holding files under $D open, and
# job processes whose environment has SLURM_JOB_ID and this SLURM_CONF.
leftover_job_pids() {
    local p comm fd pid
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        ((pid == $$ || pid == PPID)) && continue
        comm=$(cat "$p/comm" 2>/dev/null) || continue
        if [[ $comm == slurmstepd* ]]; then
            for fd in "$p"/fd/*; do
                if [[ $(readlink "$fd" 2>/dev/null) == "$D"/* ]]; then
                    echo "$pid"
                    break
                fi
            done
        elif tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -q '^SLURM_JOB_ID='; then
            if tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qxF "SLURM_CONF=$SLURM_CONF"; then
                echo "$pid"
            fi
        fi
    done
}

stop_all() {
    # Thaw anything left frozen by "ctl.sh ... freeze" so it can take part.
    local f pid
    for f in "$RUN"/*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/}
        f=${f%.pid}
        [[ $f == mysqld ]] && f=mariadbd
        if pid=$(daemon_pid "$f"); then
            kill -CONT "$pid" 2>/dev/null || true
        fi
    done
    cancel_all_jobs
    local -a names
    mapfile -t names < <(slurmd_names)
    stop_daemons "${names[@]}" slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadbd munged
    local -a left
    mapfile -t left < <(leftover_job_pids)
    if ((${#left[@]})); then
        log "killing leftover job processes ${left[*]}"
        kill -KILL "${left[@]}" 2>/dev/null || true
    fi
}

require_packages() {
    local bin
    for bin in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr scontrol sinfo; do
        command -v "$bin" >/dev/null || die "$bin not found; run deploy/local-slurm/install-packages.sh as root"
    done
    ((EUID == 0)) || die "must run as root"
}
