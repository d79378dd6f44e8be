#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12/13 machine, as root:
#   Debian packages (Slurm, munge, MariaDB), the virtual environment, ruff and mypy, then pytest.
# The test session starts its own single-host Slurm (in /tmp/ucloud-slurm-test, ports 69xx) and stops
# it at the end. Arguments go to pytest, e.g.  deploy/test.sh -m "not slow"
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/local-slurm/install-packages.sh"
# Tools some tests use: sudo (jobs submitted as their owner), shellcheck (the deploy scripts).
missing=()
for tool in sudo shellcheck; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
"$ROOT/deploy/bootstrap.sh"
cd "$ROOT"
# Lint and types first (seconds): a finding fails the run as a test would.
"$ROOT/.venv/bin/ruff" check provider tests bench
"$ROOT/.venv/bin/mypy"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
