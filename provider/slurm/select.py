"""Choosing the Slurm backend from ``[slurm] backend``, and saying why in one log line.

``auto`` takes pyslurm when a pyslurm worker starts and the Slurm it was built for has the same
major.minor as the running controller (or, with the controller down, as the installed ``scontrol``);
otherwise the commands. pyslurm is built against exactly one Slurm major: a mismatch fails at import
at best, or misreads structures at worst.
"""

from __future__ import annotations

import re

import structlog

from provider.config import SlurmSection
from provider.slurm.backend import SlurmBackend
from provider.slurm.commands import CommandBackend
from provider.slurm.process import CommandTimeout, SlurmTools
from provider.slurm.pyslurm_backend import PyslurmBackend, WorkerUnavailable

log = structlog.get_logger(__name__)


class BackendUnavailable(Exception):
    """The configured backend cannot be used here; the message says what is missing."""


def major_minor(version: str | None) -> str | None:
    match = re.search(r"(\d+)\.(\d+)", version or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


async def installed_slurm_version(cfg: SlurmSection) -> str | None:
    """``scontrol --version`` ("slurm 22.05.8" -> "22.05.8"), or None if it cannot be run."""
    try:
        result = await SlurmTools(bin_dir=cfg.bin_dir, slurm_conf=cfg.conf or None).run("scontrol", ["--version"], timeout=10)
    except (CommandTimeout, OSError):
        return None
    match = re.search(r"(\d+\.\d+\.\d+)", result.stdout)
    return match.group(1) if match and result.returncode == 0 else None


def command_backend(cfg: SlurmSection) -> CommandBackend:
    return CommandBackend(slurm_conf=cfg.conf or None, timeout=cfg.query_timeout, bin_dir=cfg.bin_dir)


async def select_backend(cfg: SlurmSection) -> tuple[SlurmBackend, str]:
    """The backend to use and why. Raises ``BackendUnavailable`` if ``pyslurm`` was asked for and
    cannot serve this cluster."""
    if cfg.backend == "cli":
        return command_backend(cfg), "configured: backend = \"cli\""
    installed = await installed_slurm_version(cfg)
    pyslurm = PyslurmBackend(python=cfg.pyslurm_python, slurm_conf=cfg.conf or None, timeout=cfg.query_timeout)
    try:
        probe = await pyslurm.start()
        running = probe.get("controller") or installed
        built = probe.get("built_for")
        if major_minor(built) == major_minor(running) and running:
            return pyslurm, f"pyslurm {probe.get('pyslurm')} built for Slurm {built}; the cluster runs {running}"
        await pyslurm.close()
        why = f"pyslurm {probe.get('pyslurm')} is built for Slurm {built}, but the cluster runs {running or 'an unknown version'}"
    except WorkerUnavailable as exc:
        why = str(exc)
    if cfg.backend == "pyslurm":
        wanted = major_minor(installed) or "this cluster's version"
        raise BackendUnavailable(
            f'[slurm] backend = "pyslurm" cannot be used: {why}. This cluster runs Slurm {installed or "(unknown)"}; '
            f"it needs a pyslurm built for Slurm {wanted} (pyslurm {wanted}.x, built against this Slurm's headers; "
            'see docs/admin.md), or set backend = "auto" or "cli"'
        )
    return command_backend(cfg), f"auto: {why}; using squeue and sacct"


async def open_backend(cfg: SlurmSection) -> SlurmBackend:
    backend, why = await select_backend(cfg)
    log.info("slurm.backend_selected", backend=backend.name, why=why)
    return backend


async def close_backend(backend: SlurmBackend) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        await close()
