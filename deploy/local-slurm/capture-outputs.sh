#!/usr/bin/env bash
# Create jobs in known situations on a fresh local cluster and capture the
# exact squeue/sacct outputs the provider's parsers read, including unknown
# job ids and slurmctld/slurmdbd being down. Rerun it on another Slurm
# version to get a new tests/data/slurm-captures/<major.minor>/ directory.
#
#   capture-outputs.sh [--keep]      --keep: leave the cluster running
#
# It uses its OWN cluster directory and ports by default (so it never wipes a
# cluster that tests use): SLURM_LOCAL_DIR=/tmp/ucloud-slurm-capture and
# ports 7117/7118/7119/3607, memory enforcement on (for the OOM job) and
# MinJobAge=3600. Output dir: CAPTURE_OUT (default: the repository's
# tests/data/slurm-captures/<major.minor>). Takes about 3 minutes (the
# TIMEOUT job needs --time=1 to expire; frozen daemons make clients wait for
# their timeouts).
#
# Every command is run from an argument array; nothing is eval'd.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

export SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/tmp/ucloud-slurm-capture}
export SLURM_LOCAL_CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-7117}
export SLURM_LOCAL_SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-7118}
export SLURM_LOCAL_DBD_PORT=${SLURM_LOCAL_DBD_PORT:-7119}
export SLURM_LOCAL_DB_PORT=${SLURM_LOCAL_DB_PORT:-3607}
export SLURM_LOCAL_MEMORY_ENFORCE=${SLURM_LOCAL_MEMORY_ENFORCE:-1}
export SLURM_LOCAL_MIN_JOB_AGE=${SLURM_LOCAL_MIN_JOB_AGE:-3600}
LOG_TAG=capture
# shellcheck source=SCRIPTDIR/common.sh
source "$HERE/common.sh"

keep=0
for arg in "$@"; do
    case $arg in
        --keep) keep=1 ;;
        -h | --help)
            sed -n '2,16p' "$0"
            exit 0
            ;;
        *) die "unknown argument: $arg (usage: capture-outputs.sh [--keep])" ;;
    esac
done

"$HERE/start.sh" --fresh

full_version=$(scontrol --version)
version=$(slurm_version)
OUT=${CAPTURE_OUT:-$REPO/tests/data/slurm-captures/$version}
mkdir -p "$OUT"
find "$OUT" -mindepth 1 -maxdepth 1 -type f -delete
printf '%s\n' "$full_version" >"$OUT/version.txt"
cp "$SLURM_CONF" "$OUT/slurm.conf"
log "capturing Slurm $full_version into $OUT"

US=$'\x1f'
# The two squeue forms: '|' after each field, and the ASCII unit separator.
SQUEUE_FIELDS=(JobID ArrayJobID ArrayTaskID State Reason exit_code Name)
join_fields() {
    local sep=$1 spec="" f
    for f in "${SQUEUE_FIELDS[@]}"; do
        spec+="$f:0$sep,"
    done
    # The last field (Name) gets no separator after it.
    spec=${spec%"$sep,"}
    printf '%s' "$spec"
}
SQUEUE_PIPE_SPEC=$(join_fields '|')
SQUEUE_US_SPEC=$(join_fields "$US")
SACCT_FIELDS=JobIDRaw,JobID,JobName,State,ExitCode,Reason,Submit,Start,End,Elapsed,Timelimit,Comment

# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
printf 'situation\tjob_id\tsbatch_argv\n' >"$OUT/jobs.tsv"
declare -A JOB=()
ALL_IDS=()

# submit SITUATION SBATCH_ARGS...: submit, remember the id.
submit() {
    local situation=$1
    shift
    local -a argv=(sbatch --parsable -o /dev/null "$@")
    local id
    id=$("${argv[@]}")
    id=${id%%;*}
    JOB[$situation]=$id
    ALL_IDS+=("$id")
    printf '%s\t%s\t%s\n' "$situation" "$id" "$(printf '%q ' "${argv[@]}")" >>"$OUT/jobs.tsv"
    log "job $id: $situation"
}

state_of() { squeue -h -t all -j "$1" -o '%T' 2>/dev/null | sort -u | tr '\n' ' '; }
# wait_state ID STATE...: until every record of job ID is in one of STATEs.
wait_state() {
    local id=$1
    shift
    local deadline=$((SECONDS + 240)) s st want ok
    local -a states
    while :; do
        ok=1
        s=$(state_of "$id")
        read -r -a states <<<"$s"
        ((${#states[@]})) || ok=0
        for st in "${states[@]}"; do
            local match=0
            for want in "$@"; do
                [[ $st == "$want" ]] && match=1
            done
            ((match)) || ok=0
        done
        ((ok)) && return 0
        if ((SECONDS >= deadline)); then
            log "WARNING: job $id is '$s', wanted $*"
            return 1
        fi
        sleep 0.5
    done
}

# Start the slow one first.
submit timeout --job-name=timeout --time=1 --wrap 'sleep 200'
submit pending_held --job-name=held --hold --wrap 'true'
submit running --job-name=running --wrap 'sleep 300'
submit completed --job-name=completed --comment='ucloud job 4711' --wrap 'exit 0'
submit failed_exit1 --job-name=fail1 --wrap 'exit 1'
# shellcheck disable=SC2016 # $$ is for the job's shell
submit failed_signal --job-name=sigkill --wrap 'kill -9 $$'
submit cancelled_running --job-name=cancel_running --wrap 'sleep 300'
submit cancelled_pending --job-name=cancel_pending --hold --wrap 'true'
submit array_finished --job-name=arr --array=0-2 --wrap 'true'
submit array_held --job-name=arrheld --array=0-2 --hold --wrap 'true'
submit name_with_pipe --job-name='a|b c' --wrap 'true'
if [[ $SLURM_LOCAL_MEMORY_ENFORCE == 1 ]]; then
    submit out_of_memory --job-name=oom --mem=50 --wrap \
        'python3 -c "import time; a = bytearray(300 << 20); a[::4096] = b\"x\" * (len(a) // 4096); time.sleep(60)"'
fi

wait_state "${JOB[cancelled_running]}" RUNNING
scancel "${JOB[cancelled_running]}"
scancel "${JOB[cancelled_pending]}"

wait_state "${JOB[running]}" RUNNING
wait_state "${JOB[completed]}" COMPLETED
wait_state "${JOB[failed_exit1]}" FAILED
wait_state "${JOB[failed_signal]}" FAILED
wait_state "${JOB[cancelled_running]}" CANCELLED
wait_state "${JOB[cancelled_pending]}" CANCELLED
wait_state "${JOB[array_finished]}" COMPLETED
wait_state "${JOB[name_with_pipe]}" COMPLETED
if [[ -n ${JOB[out_of_memory]:-} ]]; then
    wait_state "${JOB[out_of_memory]}" FAILED OUT_OF_MEMORY CANCELLED COMPLETED || true
fi
log "waiting for the TIMEOUT job (about 60-100 s after it started)"
wait_state "${JOB[timeout]}" TIMEOUT

mapfile -t SORTED_IDS < <(printf '%s\n' "${ALL_IDS[@]}" | sort -n)
ID_LIST=$(
    IFS=,
    echo "${SORTED_IDS[*]}"
)

SQUEUE_PIPE=(squeue -h -t all -a -O "$SQUEUE_PIPE_SPEC")
SQUEUE_US=(squeue -h -t all -a -O "$SQUEUE_US_SPEC")
SACCT=(sacct -n -P -X "--delimiter=$US" -j "$ID_LIST" -o "$SACCT_FIELDS")

# sacct lags behind slurmctld (records are sent asynchronously): wait until
# every raw job id that squeue shows is in sacct with the same state.
sacct_in_sync() {
    local sq sa id st
    sq=$(squeue -h -t all -a -O "JobID:0 ,State:0") || return 1
    sa=$("${SACCT[@]}" | awk -F "$US" '{ print $1 " " $4 }') || return 1
    while read -r id st; do
        grep -q "^$id $st" <<<"$sa" || return 1
    done <<<"$sq"
}
wait_until 60 "sacct in sync with squeue" sacct_in_sync ||
    log "WARNING: sacct not in sync with squeue; capturing anyway"

# ---------------------------------------------------------------------------
# Captures
# ---------------------------------------------------------------------------
printf 'name\trc\tseconds\targv\n' >"$OUT/manifest.tsv"
# capture NAME CMD...: NAME.txt = stdout, NAME.stderr = stderr, NAME.rc = rc.
capture() {
    local name=$1
    shift
    local t0 t1 rc=0
    t0=${EPOCHREALTIME/./}
    "$@" >"$OUT/$name.txt" 2>"$OUT/$name.stderr" || rc=$?
    t1=${EPOCHREALTIME/./}
    printf '%s\n' "$rc" >"$OUT/$name.rc"
    local us=$((t1 - t0))
    printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$rc" $((us / 1000000)) $((us % 1000000 / 1000)) \
        "$(printf '%q ' "$@")" >>"$OUT/manifest.tsv"
    log "captured $name (rc=$rc, $((us / 1000)) ms)"
}

capture squeue "${SQUEUE_PIPE[@]}"
capture squeue-us "${SQUEUE_US[@]}"
capture sacct "${SACCT[@]}"
capture sacct-unknown sacct -n -P -X "--delimiter=$US" -j 999999 -o "$SACCT_FIELDS"
capture squeue-unknown squeue -h -t all -a -j 999999 -O "$SQUEUE_US_SPEC"
capture squeue-unknown-pipe squeue -h -t all -a -j 999999 -O "$SQUEUE_PIPE_SPEC"
capture squeue-known-and-unknown squeue -h -t all -a -j "${JOB[completed]},999999" -O "$SQUEUE_US_SPEC"

# sbatch: the answer to --parsable, a time-limit rejection (partition
# "short" has MaxTime=10 and EnforcePartLimits=ALL), a memory rejection.
capture sbatch-parsable sbatch --parsable -o /dev/null --job-name=late --hold --wrap 'true'
capture sbatch-timelimit-rejected sbatch --parsable -o /dev/null -p short --time=20 --wrap 'true'
capture sbatch-mem-rejected sbatch --parsable -o /dev/null --mem=999999 --wrap 'true'

# Faults. "down": the daemon is stopped (connection refused). "frozen": the
# daemon is SIGSTOPped (connects, never answers: client timeouts).
"$HERE/ctl.sh" slurmctld stop
capture squeue-ctld-down "${SQUEUE_US[@]}"
capture sacct-ctld-down "${SACCT[@]}"
capture sbatch-ctld-down sbatch --parsable -o /dev/null --hold --wrap 'true'
"$HERE/ctl.sh" slurmctld start

"$HERE/ctl.sh" slurmctld freeze
capture squeue-ctld-frozen "${SQUEUE_US[@]}"
"$HERE/ctl.sh" slurmctld thaw
wait_until 30 "scontrol ping" ctld_ok

"$HERE/ctl.sh" slurmdbd stop
capture sacct-dbd-down "${SACCT[@]}"
capture squeue-dbd-down "${SQUEUE_US[@]}"
"$HERE/ctl.sh" slurmdbd start

"$HERE/ctl.sh" slurmdbd freeze
capture sacct-dbd-frozen "${SACCT[@]}"
"$HERE/ctl.sh" slurmdbd thaw
wait_until 30 "slurmdbd" dbd_ok

if ((keep)); then
    log "cluster left running; . $SLURM_LOCAL_DIR/env.sh"
else
    "$HERE/stop.sh" --purge
fi
log "done: $OUT"
