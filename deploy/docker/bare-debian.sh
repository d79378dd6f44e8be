#!/usr/bin/env bash
# The README's two commands on a bare minimal Debian, so that they cannot come to need something a
# fresh machine lacks: for each release given (default: bookworm trixie), a debootstrap minbase image
# (no Python, no git), this commit's tree in it (as a clone would give it), then
#   deploy/run-local.sh   until the stand-in Core has received SUCCESS for the demo job, and
#   deploy/test.sh ARGS   (UCLOUD_TEST_PARTS=local; default ARGS: the real-Slurm job tests)
# in a container with every capability this host holds (the local Slurm, users, sudo and the tests'
# tmpfs need them). As root.
#
#   bare-debian.sh [RELEASE...] [-- PYTEST ARGS...]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LOG_TAG=bare
# shellcheck source=SCRIPTDIR/../local-slurm/common.sh
source "$ROOT/deploy/local-slurm/common.sh" # log, die
releases=()
while (($#)) && [[ $1 != -- ]]; do releases+=("$1") && shift; done
(($#)) && shift
((${#releases[@]})) || releases=(bookworm trixie)
(($#)) || set -- tests/test_jobs_slurm.py tests/test_multinode_slurm.py
"$HERE/cluster.sh" engine
trap '"$HERE/cluster.sh" engine-down' EXIT
# pip in the container goes through this site's HTTPS proxy like the host's: trust what the host trusts.
CA=/etc/ssl/certs/ca-certificates.crt
# Not --privileged: that asks for every capability, and runc fails ("unable to apply caps") on a host
# that is itself a container without some of them (CAP_SYS_RESOURCE, on the CI machines).
# Each capability's name by its bit (linux/capability.h); the ones this host's bounding set lacks are dropped.
CAP_NAMES=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
    NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT
    SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE
    AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ
    PERFMON BPF CHECKPOINT_RESTORE)
bounding=$((16#$(awk '/^CapBnd/ {print $2}' /proc/self/status)))
CAPS=(--cap-add ALL --security-opt seccomp=unconfined)
for bit in "${!CAP_NAMES[@]}"; do
    ((bounding >> bit & 1)) || CAPS+=(--cap-drop "${CAP_NAMES[bit]}")
done

for release in "${releases[@]}"; do
    image=ucloud-bare:$release
    "$HERE/cluster.sh" image "$release" "$image"
    t=$SECONDS
    log "$release: run-local.sh, then test.sh $*"
    git -C "$ROOT" archive --format=tar HEAD |
        docker run --rm -i "${CAPS[@]}" --name "ucloud-bare-$release" -v "$CA:/host-ca.crt:ro" -e PIP_CERT=/host-ca.crt \
            "$image" bash -c '
                set -euo pipefail
                mkdir -p /root/ucloud-slurm-provider && cd /root/ucloud-slurm-provider && tar -x
                deploy/run-local.sh >/tmp/run-local.log 2>&1 &
                demo=$!
                for _ in $(seq 1 600); do grep -q "^   SUCCESS - " /tmp/run-local.log && break; sleep 1; done
                grep -q "^   SUCCESS - " /tmp/run-local.log || { tail -40 /tmp/run-local.log; exit 1; }
                echo "run-local.sh: Core received SUCCESS"
                kill "$demo" # its daemon and dev-core may stay: the test cluster has ports of its own
                UCLOUD_TEST_PARTS=local deploy/test.sh -q -p no:cacheprovider "$@"' bare "$@" ||
        die "$release: the README commands failed on a bare Debian"
    log "$release: both README commands passed in $((SECONDS - t)) s"
done
