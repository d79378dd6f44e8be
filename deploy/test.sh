#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12/13 machine, as root:
#   Debian packages (Slurm, munge, MariaDB), the virtual environment, then pytest.
# The test session starts its own single-host Slurm (in /tmp/ucloud-slurm-test, ports 69xx) and stops
# it at the end. Arguments go to pytest, e.g.  deploy/test.sh -m "not slow"
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/deploy/local-slurm/install-packages.sh"
"$ROOT/deploy/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
