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
# Seconds to wait for a daemon to come up / to exit after SIGTERM.
SLURM_LOCAL_START_TIMEOUT=${SLURM_LOCAL_START_TIMEOUT:-60}
SLURM_LOCAL_STOP_TIMEOUT=${SLURM_LOCAL_STOP_TIMEOUT:-20}

D=$SLURM_LOCAL_DIR
ETC=$D/etc
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
log() { printf '[%s] %s\n' "${LOG_TAG:-slurm-local}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Node names are node1..nodeN; node1 listens on SLURM_LOCAL_SLURMD_PORT,
# nodeK (K>=2) on SLURM_LOCAL_SLURMD_PORT+10+K.
node_names() {
    local i
    for ((i = 1; i <= SLURM_LOCAL_NODES; i++)); do
        printf 'node%d\n' "$i"
    done
}
node_port() {
    local k=${1#node}
    if ((k == 1)); then
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
    local name=$1 pf pid comm
    pf=$(pidfile_of "$name")
    [[ -s $pf ]] || return 1
    pid=$(tr -dc '0-9' <"$pf")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    comm_matches "$name" "$comm" || return 1
    # A zombie is not alive.
    if grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
        return 1
    fi
    echo "$pid"
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
            if daemon_running "${names[$i]}"; then
                alive=1
            fi
        done
        ((alive)) || break
        if ((SECONDS >= deadline)); then
            for i in "${!pids[@]}"; do
                if daemon_running "${names[$i]}"; then
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
detached() {
    local logfile=$1
    shift
    setsid "$@" </dev/null >>"$logfile" 2>&1
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
take_lock() {
    mkdir -p "$D"
    exec 9>"$D/.lock"
    flock 9
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
    ((n == SLURM_LOCAL_NODES))
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

render_slurm_conf() {
    local enforce=""
    if [[ $SLURM_LOCAL_ENFORCE == 1 ]]; then
        enforce="AccountingStorageEnforce=associations,limits"
    fi
    cat <<CONF
# Generated by deploy/local-slurm/start.sh; edits are overwritten.
ClusterName=$SLURM_LOCAL_CLUSTER
SlurmctldHost=$SLURM_LOCAL_HOST(127.0.0.1)
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
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURM_LOCAL_DBD_PORT
# slurmctld->slurmdbd (and sacct/sacctmgr) ignore AuthInfo=socket=... in
# 22.05; AccountingStoragePass is the documented way to name the munge socket.
AccountingStoragePass=$MUNGE_SOCKET
AccountingStoreFlags=job_comment
$enforce
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
JobCompType=jobcomp/none
ReturnToService=1
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=$SLURM_LOCAL_SCHED_INTERVAL
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=$SLURM_LOCAL_ENFORCE_PART_LIMITS
MinJobAge=$SLURM_LOCAL_MIN_JOB_AGE
KillWait=$SLURM_LOCAL_KILL_WAIT
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=$SLURM_LOCAL_SLURMD_TIMEOUT
CONF
    local node
    while read -r node; do
        printf 'NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%s CPUs=%s RealMemory=%s State=UNKNOWN\n' \
            "$node" "$SLURM_LOCAL_HOST" "$(node_port "$node")" "$SLURM_LOCAL_CPUS" "$SLURM_LOCAL_MEMORY"
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
DbdHost=$SLURM_LOCAL_HOST
DbdAddr=127.0.0.1
DbdPort=$SLURM_LOCAL_DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
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

start_munged() {
    daemon_running munged && return 0
    if [[ ! -s $D/munge/munge.key ]]; then
        mungekey --create --keyfile="$D/munge/munge.key" >>"$LOG/munged.stdout" 2>&1
        chmod 600 "$D/munge/munge.key"
    fi
    rm -f "$(pidfile_of munged)"
    log "starting munged"
    detached "$LOG/munged.stdout" munged --key-file="$D/munge/munge.key" \
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
    log "starting mariadbd on 127.0.0.1:$SLURM_LOCAL_DB_PORT"
    detached "$LOG/mysqld.stderr" mariadbd --no-defaults --user=root \
        --datadir="$D/mysql/data" --socket="$MYSQL_SOCKET" \
        --pid-file="$(pidfile_of mariadbd)" --bind-address=127.0.0.1 \
        --port="$SLURM_LOCAL_DB_PORT" --skip-name-resolve --skip-log-bin \
        --log-error="$LOG/mysqld.log" --innodb-buffer-pool-size=512M \
        --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        --innodb-flush-log-at-trx-commit=2 &
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "mariadbd" mariadb_ok
    wait_until "$SLURM_LOCAL_START_TIMEOUT" "mariadbd pid file" daemon_running mariadbd
    mariadb --no-defaults -S "$MYSQL_SOCKET" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL
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

# Cluster, account and root's association to it (idempotent, one query when
# everything is there).
ensure_accounting() {
    local assocs
    assocs=$(sacctmgr -n -P show assoc where user=root format=cluster,account,user)
    if ! grep -q "^$SLURM_LOCAL_CLUSTER|" <<<"$assocs" &&
        ! cluster_listed; then
        log "registering cluster $SLURM_LOCAL_CLUSTER"
        sacctmgr -i add cluster "$SLURM_LOCAL_CLUSTER" >/dev/null
    fi
    if ! grep -qx "$SLURM_LOCAL_CLUSTER|$SLURM_LOCAL_ACCOUNT|root" <<<"$assocs"; then
        if ! sacctmgr -n -P show account where name="$SLURM_LOCAL_ACCOUNT" format=account |
            grep -qx "$SLURM_LOCAL_ACCOUNT"; then
            log "adding account $SLURM_LOCAL_ACCOUNT"
            sacctmgr -i add account "$SLURM_LOCAL_ACCOUNT" cluster="$SLURM_LOCAL_CLUSTER" \
                description=local-test organization=ucloud >/dev/null
        fi
        log "adding association root -> $SLURM_LOCAL_ACCOUNT"
        sacctmgr -i add user root account="$SLURM_LOCAL_ACCOUNT" cluster="$SLURM_LOCAL_CLUSTER" >/dev/null
    fi
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
    wait_until $((SLURM_LOCAL_KILL_WAIT + 30)) "jobs to end" no_active_jobs || true
}
no_active_jobs() {
    local out
    out=$(squeue -h -t running,completing,configuring,suspended,stage_out -o '%A') || return 1
    [[ -z $out ]]
}

# slurmstepd processes of this cluster (they hold files under $D open).
# Normally none are left once the jobs ended; this is a safety net.
leftover_stepds() {
    local p comm fd
    for p in /proc/[0-9]*; do
        comm=$(cat "$p/comm" 2>/dev/null) || continue
        [[ $comm == slurmstepd* ]] || continue
        for fd in "$p"/fd/*; do
            if [[ $(readlink "$fd" 2>/dev/null) == "$D"/* ]]; then
                echo "${p#/proc/}"
                break
            fi
        done
    done
}

stop_all() {
    cancel_all_jobs
    local -a names
    mapfile -t names < <(slurmd_names)
    stop_daemons "${names[@]}" slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadbd munged
    local -a stepds
    mapfile -t stepds < <(leftover_stepds)
    if ((${#stepds[@]})); then
        log "killing leftover slurmstepd ${stepds[*]}"
        kill -KILL "${stepds[@]}" 2>/dev/null || true
    fi
}

require_packages() {
    local bin
    for bin in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr scontrol sinfo; do
        command -v "$bin" >/dev/null || die "$bin not found; run deploy/local-slurm/install-packages.sh as root"
    done
    ((EUID == 0)) || die "must run as root"
}
