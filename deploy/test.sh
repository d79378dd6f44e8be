#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12/13 machine, as root, against two real Slurm clusters:
#   1. Debian packages (Slurm, munge, MariaDB), the virtual environment, ruff and mypy, then every test
#      against the single-host cluster the test session starts itself (/tmp/ucloud-slurm-test, ports 69xx);
#   2. the Slurm tests again (pytest -m slurm) against the compose cluster of deploy/docker, which
#      deploy/docker/cluster.sh builds and starts from nothing (engine, compose, base image, images)
#      with this machine as its login node, and removes afterwards, also when tests fail;
#   3. the README's two commands from a bare minimal Debian 12 and 13 (deploy/docker/bare-debian.sh),
#      so that neither can come to need something a fresh machine lacks.
# Arguments go to pytest in the first two, e.g.  deploy/test.sh -k terminate
# UCLOUD_TEST_PARTS="local" (or any of "local compose bare") runs only those parts.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS=${UCLOUD_TEST_PARTS:-local compose bare}
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

failed=0
if [[ " $PARTS " == *" local "* ]]; then
    echo "== the single-host cluster: every test"
    "$ROOT/.venv/bin/python" -m pytest "$@" || failed=1
fi
if [[ " $PARTS " == *" compose "* ]]; then
    echo "== the compose cluster: the Slurm tests (pytest -m slurm), this machine as login node"
    export UCLOUD_COMPOSE_MIN_JOB_AGE=30 # as the single-host test cluster: tests wait for purges
    trap '"$ROOT/deploy/docker/cluster.sh" down' EXIT
    "$ROOT/deploy/docker/cluster.sh" up
    eval "$("$ROOT/deploy/docker/cluster.sh" env)"
    PROVIDER_TEST_SLURM_CONF=$SLURM_CONF PROVIDER_TEST_SLURM_CTL=$ROOT/deploy/docker/ctl.sh \
        PROVIDER_TEST_SHARED_DIR=$UCLOUD_COMPOSE_DIR/shared \
        "$ROOT/.venv/bin/python" -m pytest -m slurm -p no:cacheprovider \
        --basetemp="$UCLOUD_COMPOSE_DIR/shared/pytest" "$@" || failed=1
    "$ROOT/deploy/docker/cluster.sh" down
    trap - EXIT
fi
if [[ " $PARTS " == *" bare "* ]]; then
    echo "== the README's two commands on a bare Debian 12 and 13"
    "$ROOT/deploy/docker/bare-debian.sh" bookworm trixie || failed=1
fi
exit "$failed"
