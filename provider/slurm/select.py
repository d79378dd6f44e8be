"""Choosing the Slurm backend from ``[slurm] backend``, and saying why in one log line."""

from __future__ import annotations

import structlog

from provider.config import SlurmSection
from provider.slurm.backend import SlurmBackend
from provider.slurm.commands import CommandBackend

log = structlog.get_logger(__name__)


class BackendUnavailable(Exception):
    """The configured backend cannot be used here; the message says what is missing."""


def select_backend(cfg: SlurmSection) -> SlurmBackend:
    if cfg.backend == "pyslurm":
        raise BackendUnavailable(
            "[slurm] backend = \"pyslurm\": this version of ucloud-slurm-provider has no pyslurm backend yet; "
            "set backend = \"cli\" or \"auto\""
        )
    why = "configured" if cfg.backend == "cli" else "auto: the pyslurm backend is not part of this version"
    log.info("slurm.backend_selected", backend="cli", why=why)
    return CommandBackend(slurm_conf=cfg.conf or None, timeout=cfg.query_timeout, bin_dir=cfg.bin_dir)
