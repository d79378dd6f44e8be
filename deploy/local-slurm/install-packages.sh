#!/usr/bin/env bash
# Install the Debian packages needed for a local single-host Slurm cluster with
# accounting (see README.md beside this file). Idempotent: when everything is
# already installed it only runs dpkg-query and exits.
#
# Works on Debian 12 (Slurm 22.05) and Debian 13 (Slurm 24.11): the package
# names below exist in both releases. Must run as root (or via sudo).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    # "ii " = installed and configured; anything else (absent, half-configured)
    # gets (re)installed.
    if [[ "$status" != ii* ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-packages: all present (${PACKAGES[*]})"
    exit 0
fi

if ((EUID != 0)); then
    echo "install-packages: missing ${missing[*]}; run as root to install" >&2
    exit 1
fi

echo "install-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The postinst scripts must not start the system's munged/mariadbd/slurm*
# (start.sh runs private ones). Container images usually ship a
# /usr/sbin/policy-rc.d that exits 101 ("do not start services"); if there is
# none, put one in place for the duration of the install.
POLICY=/usr/sbin/policy-rc.d
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\n# temporary, from install-packages.sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-packages: done"
