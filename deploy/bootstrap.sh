#!/usr/bin/env bash
# Create the project's virtual environment (.venv) with the daemon and its test tools installed.
# Idempotent: an up-to-date .venv is left as it is (pip only checks). Needs Python >= 3.11.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}

# A bare Debian 12/13 has no Python at all: as root, install it (and venv) from Debian's packages.
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: $PYTHON is missing or older than 3.11; on Debian: apt-get install python3 python3-venv" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "bootstrap: $PYTHON has no venv module; on Debian: apt-get install python3-venv" >&2
    exit 1
fi
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/.venv"
fi
"$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "${ROOT}[test]"
echo "bootstrap: $("$ROOT/.venv/bin/ucloud-slurm-provider" --help >/dev/null && echo ready) ($ROOT/.venv)"
