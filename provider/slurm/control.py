"""Changing things in Slurm: sbatch, scancel and scontrol, as the daemon's user or as a job's owner.

Every call is an argument list built by ``SlurmTools`` (the one home of bin_dir, SLURM_CONF and sudo).
A job's environment never travels on a command line: sbatch reads it from a file (``--export-file``).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from provider.slurm.process import CommandResult, CommandTimeout, SlurmTools

log = structlog.get_logger(__name__)


class SlurmCommandFailed(Exception):
    """A Slurm command ran and refused; ``result`` has its exit code and stderr."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(result.describe())
        self.result = result


class SlurmControl:
    def __init__(self, *, slurm_conf: str | None, bin_dir: str = "", timeout: float = 30.0) -> None:
        self.tools = SlurmTools(bin_dir=bin_dir, slurm_conf=slurm_conf, timeout=timeout)

    async def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        user: str | None = None,
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run a Slurm tool; raise ``SlurmCommandFailed`` if it refuses, ``CommandTimeout`` if it hangs."""
        result = await self.tools.run(tool, args, user=user, timeout=timeout, cwd=cwd)
        log.debug("slurm.command", tool=tool, rc=result.returncode, seconds=round(result.seconds, 3))
        if result.returncode != 0:
            raise SlurmCommandFailed(result)
        return result

    async def submit(self, args: Sequence[str], script: str, *, user: str | None, cwd: str, timeout: float) -> str:
        """``sbatch --parsable <args> <script>``: the new job's id (``id;cluster`` is cut to the id)."""
        result = await self.run("sbatch", [*args, script], user=user, timeout=timeout, cwd=cwd)
        slurm_id = result.stdout.strip().split(";", 1)[0]
        if not slurm_id.isdigit():
            raise SlurmCommandFailed(result)
        return slurm_id

    async def cancel(
        self, slurm_ids: Sequence[str], *, user: str | None = None, name: str | None = None, timeout: float | None = None
    ) -> CommandResult:
        """One scancel for all the ids (scancel of an unknown or finished id exits 0 and says nothing).

        With ``name``, Slurm itself cancels only jobs of these ids that carry that name, so an id that
        was reused by another job (ids wrap; a wiped slurmctld starts again at 1) is left alone.
        """
        filters = [f"--name={name}"] if name is not None else []
        return await self.run("scancel", [*filters, *slurm_ids], user=user, timeout=timeout)

    async def set_time_limit(self, slurm_id: str, time_limit: str) -> None:
        """``scontrol update JobId=N TimeLimit=...``; raising a limit needs a Slurm operator or admin,
        so this runs as the daemon's user (an operator) even for jobs that run as their owner."""
        await self.run("scontrol", ["update", f"JobId={slurm_id}", f"TimeLimit={time_limit}"])


__all__ = ["CommandTimeout", "SlurmCommandFailed", "SlurmControl"]
