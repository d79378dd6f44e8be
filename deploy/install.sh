#!/usr/bin/env bash
# Install ucloud-slurm-provider as a systemd service on a Slurm login node (Debian 12/13), as root:
#   deploy/install.sh
# - the system user ucloud-provider (no login, no home of its own);
# - a virtual environment in /opt/ucloud-slurm-provider/venv with this checkout installed;
# - /etc/ucloud-slurm-provider (root:ucloud-provider, 0750) with config.toml from config.example.toml
#   unless one is there; refresh_token and ucloud_key.pub, if present, get root:ucloud-provider 0640
#   (the daemon refuses a refresh token that other users can read);
# - the unit in /etc/systemd/system, enabled (not started: first put the key and token in place, then
#   `systemctl start ucloud-slurm-provider`). /var/lib/ucloud-slurm-provider comes from StateDirectory=.
# Idempotent. PREFIX, CONF_DIR, UNIT_DIR and SERVICE_USER move things elsewhere (tests use them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-/opt/ucloud-slurm-provider}
CONF_DIR=${CONF_DIR:-/etc/ucloud-slurm-provider}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
SERVICE_USER=${SERVICE_USER:-ucloud-provider}
PYTHON=${PYTHON:-python3}
UNIT=ucloud-slurm-provider.service

[ "$(id -u)" = 0 ] || { echo "install: run as root" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "install: $PYTHON is older than 3.11" >&2; exit 1; }

if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --comment "ucloud-slurm-provider" "$SERVICE_USER"
    echo "install: created system user $SERVICE_USER"
fi

install -d -m 0755 "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PREFIX/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$ROOT"
install -d -m 0755 "$PREFIX/doc"
install -m 0644 "$ROOT/docs/admin.md" "$ROOT/config.example.toml" "$PREFIX/doc/"
echo "install: $("$PREFIX/venv/bin/ucloud-slurm-provider" --help >/dev/null && echo daemon installed) in $PREFIX/venv"

install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [ ! -e "$CONF_DIR/config.toml" ]; then
    install -m 0640 -o root -g "$SERVICE_USER" "$ROOT/config.example.toml" "$CONF_DIR/config.toml"
    echo "install: wrote $CONF_DIR/config.toml (edit [provider], [ucloud], [[products]], [[applications]])"
fi
for secret in refresh_token ucloud_key.pub; do
    if [ -e "$CONF_DIR/$secret" ]; then
        chown "root:$SERVICE_USER" "$CONF_DIR/$secret"
        chmod 0640 "$CONF_DIR/$secret"
    fi
done

install -d -m 0755 "$UNIT_DIR"
sed -e "s#/opt/ucloud-slurm-provider/venv#$PREFIX/venv#g" \
    -e "s#/opt/ucloud-slurm-provider/doc#$PREFIX/doc#g" \
    -e "s#/etc/ucloud-slurm-provider/config.toml#$CONF_DIR/config.toml#g" \
    -e "s#^User=ucloud-provider#User=$SERVICE_USER#" -e "s#^Group=ucloud-provider#Group=$SERVICE_USER#" \
    "$ROOT/systemd/$UNIT" >"$UNIT_DIR/$UNIT.tmp"
chmod 0644 "$UNIT_DIR/$UNIT.tmp"
mv "$UNIT_DIR/$UNIT.tmp" "$UNIT_DIR/$UNIT"
echo "install: unit $UNIT_DIR/$UNIT"

if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable "$UNIT"
    echo "install: enabled; once $CONF_DIR/refresh_token and ucloud_key.pub are in place: systemctl start ucloud-slurm-provider"
else
    echo "install: systemd is not managing this system (or UNIT_DIR is elsewhere): not enabled"
fi
