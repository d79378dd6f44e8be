#!/usr/bin/env bash
# Bring up everything on one fresh Debian 12/13 machine, as root, and run the daemon in the foreground:
#   Debian packages -> .venv -> local Slurm (/tmp/ucloud-slurm-local) -> dev-core (a stand-in for
#   UCloud/Core on 127.0.0.1:8080, which writes the provider's key and refresh token where the daemon's
#   embedded defaults look: /etc/ucloud-slurm-provider) -> `ucloud-slurm-provider serve` with no config
#   file (SQLite in /var/lib/ucloud-slurm-provider, command backend, 127.0.0.1:8889).
# Ctrl-C stops the daemon and dev-core; the local Slurm keeps running (deploy/local-slurm/stop.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${RUN_DIR:-/tmp/ucloud-slurm-provider-demo}
"$ROOT/deploy/local-slurm/install-packages.sh"
"$ROOT/deploy/bootstrap.sh"
"$ROOT/deploy/local-slurm/start.sh"
export SLURM_CONF=${SLURM_LOCAL_DIR:-/tmp/ucloud-slurm-local}/etc/slurm.conf
mkdir -p "$RUN_DIR"
BIN="$ROOT/.venv/bin/ucloud-slurm-provider"

"$BIN" dev-core serve --record "$RUN_DIR/core-updates.jsonl" >"$RUN_DIR/dev-core.log" 2>&1 &
CORE_PID=$!
trap 'kill "$CORE_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    grep -q "public key" "$RUN_DIR/dev-core.log" 2>/dev/null && break
    sleep 0.1
done
cat <<INFO
dev-core (stand-in UCloud/Core) on http://127.0.0.1:8080; its log: $RUN_DIR/dev-core.log
updates it receives: $RUN_DIR/core-updates.jsonl      (or: curl -s http://127.0.0.1:8080/dev/updates)
Try, in another terminal (as root, with: export SLURM_CONF=$SLURM_CONF):
  $BIN dev-core verify 54112                       # the seed: Core asks about a job we never knew
  id=\$(sbatch --parsable --job-name=4242 -o /dev/null --wrap 'sleep 60')
  $BIN jobs track 4242 \$id && $BIN dev-core verify 4242:IN_QUEUE
  $BIN jobs list
INFO
"$BIN" serve
