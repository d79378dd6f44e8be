"""The systemd notify protocol (``Type=notify``): READY, STOPPING, STATUS and watchdog pings.

A datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); without that
variable every call does nothing, so the daemon runs the same under systemd and elsewhere.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


def notify(*lines: str) -> bool:
    """Send ``KEY=value`` lines to systemd; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("systemd.notify_failed", error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 1_000_000 / 2)
    except ValueError:
        return None
