"""Changing things in Slurm: sbatch, scancel and scontrol, as the daemon's user or as a job's owner.

Every call is an argument list. Running as the owner goes through ``sudo -n -u <user> -- env K=V ...``:
values travel as separate arguments, never through a shell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from provider.slurm.process import CommandResult, CommandTimeout, run_command, slurm_environment

log = structlog.get_logger(__name__)


class SlurmCommandFailed(Exception):
    """A Slurm command ran and refused; ``result`` has its exit code and stderr."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(result.describe())
        self.result = result


class SlurmControl:
    def __init__(self, *, slurm_conf: str | None, bin_dir: str = "", timeout: float = 30.0) -> None:
        self._slurm_conf = slurm_conf
        self._bin = bin_dir.rstrip("/") + "/" if bin_dir else ""
        self._timeout = timeout
        self._env = slurm_environment(slurm_conf)

    def _command(self, argv: Sequence[str], user: str | None, job_env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        env = {**self._env, **job_env}
        if user is None:
            return list(argv), env
        # sudo resets the environment: what the job needs is passed explicitly, as arguments to env(1).
        keep = {k: v for k, v in env.items() if k.startswith("UCLOUD_") or k == "SLURM_CONF"}
        wrapped = ["sudo", "-n", "-u", user, "--", "env", *(f"{k}={v}" for k, v in keep.items()), *argv]
        return wrapped, dict(self._env)

    async def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        user: str | None = None,
        job_env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run a Slurm tool; raise ``SlurmCommandFailed`` if it refuses, ``CommandTimeout`` if it hangs."""
        argv, env = self._command([self._bin + tool, *args], user, job_env or {})
        result = await run_command(argv, timeout=timeout or self._timeout, env=env, cwd=cwd)
        log.debug("slurm.command", tool=tool, rc=result.returncode, seconds=round(result.seconds, 3))
        if result.returncode != 0:
            raise SlurmCommandFailed(result)
        return result

    async def submit(
        self, argv: Sequence[str], script: str, *, user: str | None, job_env: Mapping[str, str], timeout: float
    ) -> str:
        """``sbatch --parsable ... <script>``: the new job's id (``id;cluster`` is cut to the id)."""
        tool, *args = argv
        result = await self.run(tool, [*args, script], user=user, job_env=job_env, timeout=timeout)
        slurm_id = result.stdout.strip().split(";", 1)[0]
        if not slurm_id.isdigit():
            raise SlurmCommandFailed(result)
        return slurm_id

    async def cancel(self, slurm_ids: Sequence[str], *, user: str | None = None) -> CommandResult:
        """One scancel for all the ids (scancel of an unknown or finished id exits 0 and says nothing)."""
        return await self.run("scancel", list(slurm_ids), user=user)

    async def cancel_by_name(self, name: str, *, user: str | None = None) -> None:
        """Best effort after an sbatch that timed out: the job may exist although sbatch did not say so."""
        try:
            await self.run("scancel", [f"--name={name}"], user=user, timeout=10)
        except (SlurmCommandFailed, CommandTimeout, OSError) as exc:
            log.error("submit.cleanup_failed", ucloud_id=name, error=str(exc))

    async def set_time_limit(self, slurm_id: str, time_limit: str) -> None:
        """``scontrol update JobId=N TimeLimit=...``; raising a limit needs a Slurm operator or admin."""
        await self.run("scontrol", ["update", f"JobId={slurm_id}", f"TimeLimit={time_limit}"])
