#!/usr/bin/env bash
# Bring up everything on one fresh Debian 12/13 machine, as root, and show a job's whole life:
#   Debian packages -> .venv -> local Slurm (/tmp/ucloud-slurm-local) -> dev-core (a stand-in for
#   UCloud/Core on 127.0.0.1:8080, which writes the provider's key and refresh token where the daemon's
#   defaults look: /etc/ucloud-slurm-provider) -> the daemon on its embedded defaults (SQLite in
#   /var/lib/ucloud-slurm-provider, command backend, 127.0.0.1:8889) plus the demo's product and
#   application (deploy/demo/provider.toml) -> a job created through the API, followed until Core has
#   its final state. The daemon then keeps running; Ctrl-C stops it and dev-core (the local Slurm
#   keeps running: deploy/local-slurm/stop.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${RUN_DIR:-/tmp/ucloud-slurm-provider-demo}
"$ROOT/deploy/local-slurm/install-packages.sh"
"$ROOT/deploy/bootstrap.sh"
"$ROOT/deploy/local-slurm/start.sh"
export SLURM_CONF=${SLURM_LOCAL_DIR:-/tmp/ucloud-slurm-local}/etc/slurm.conf
mkdir -p "$RUN_DIR"
: >"$RUN_DIR/core-updates.jsonl"
BIN="$ROOT/.venv/bin/ucloud-slurm-provider"
cd "$ROOT"

"$BIN" dev-core serve --record "$RUN_DIR/core-updates.jsonl" >"$RUN_DIR/dev-core.log" 2>&1 &
CORE_PID=$!
DAEMON_PID=
trap 'kill $CORE_PID $DAEMON_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "public key" "$RUN_DIR/dev-core.log" 2>/dev/null && break
    sleep 0.1
done
"$BIN" check-config --config deploy/demo/provider.toml
echo "== registering the products with the stand-in Core (usage reports need them)"
"$BIN" products register --config deploy/demo/provider.toml
"$BIN" serve --config deploy/demo/provider.toml 2>&1 | tee "$RUN_DIR/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 1 100); do
    python3 - <<'PY' 2>/dev/null && break
import urllib.request; urllib.request.urlopen("http://127.0.0.1:8889/healthz", timeout=1)
PY
    sleep 0.2
done

echo "== creating a job through the provider API, as UCloud/Core does"
# The body is Go Core's own (provider/ucloud/core_go_job.json), with the ucMetricSampleRate Core adds.
created=$("$BIN" dev-core create --app hello/1.0 --param greeting=UCloud --int-param seconds=20 --time 0:05:00 \
    --sample-rate 250ms)
echo "$created"
job=$(echo "$created" | sed -n 's/^job \([0-9]*\): 200 .*/\1/p')
[ -n "$job" ] || { echo "the create was refused" >&2; exit 1; }
echo "== following the job's output live, as UCloud's job page does (dev-core follow):"
"$BIN" dev-core follow --text "$job" 2>&1 | sed -u 's/^/   live: /' &
FOLLOW_PID=$!
echo "== what the stand-in Core receives for job $job (state - status line):"
seen=0
for _ in $(seq 1 120); do
    lines=$(grep -c "\"id\":\"$job\"" "$RUN_DIR/core-updates.jsonl" || true)
    if [ "$lines" -gt "$seen" ]; then
        grep "\"id\":\"$job\"" "$RUN_DIR/core-updates.jsonl" | tail -n +"$((seen + 1))" |
            python3 -c 'import json,sys
for line in sys.stdin:
    for item in json.loads(line)["items"]:
        u = item["update"]; print("  ", u["state"] or "(status)", "-", u["status"])'
        seen=$lines
    fi
    if grep "\"id\":\"$job\"" "$RUN_DIR/core-updates.jsonl" | grep -q '"state":"\(SUCCESS\|FAILURE\|EXPIRED\)"'; then
        break
    fi
    sleep 1
done
wait "$FOLLOW_PID" || true  # the stream ends once the job is final and its output drained
folder=/var/lib/ucloud-slurm-provider/jobs/$job
echo "== the job's folder $folder holds: $(cd "$folder" && echo *)"
sed 's/^/   stdout: /' "$folder/stdout.txt" 2>/dev/null || true
cat <<INFO
== the daemon keeps running (log: $RUN_DIR/daemon.log). Try, in another terminal (as root):
  export SLURM_CONF=$SLURM_CONF
  $BIN dev-core verify 54112              # the seed: Core asks about a job the provider never knew
  $BIN dev-core create --int-param seconds=60; $BIN jobs list
  $BIN dev-core follow --text <job id>    # a job's output, live, as UCloud's job page shows it
  $BIN verify --dry-run
  $BIN usage --config deploy/demo/provider.toml      # the usage reported to Core, per owner and category
  curl -s http://127.0.0.1:8080/dev/updates
INFO
wait "$DAEMON_PID"
