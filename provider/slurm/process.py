"""Running Slurm's tools: where they live, their environment, sudo for a job's owner, and a timeout.

``SlurmTools`` is the one place that turns "run scancel as donna" into an argument list; every Slurm
command the daemon runs (sbatch, scancel, scontrol, squeue, sacct) is built by it, so ``[slurm]
bin_dir`` and ``SLURM_CONF`` cannot be applied twice or forgotten once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        """Exit 0 and nothing on stderr that says ``error``: Slurm sometimes exits 0 after failing."""
        return self.returncode == 0 and "error" not in self.stderr.lower()

    def describe(self) -> str:
        """A one-line account for logs and error bodies: the command, its exit code and stderr."""
        err = " ".join(self.stderr.split())[:500]
        return f"{self.argv[0]} exited {self.returncode}: {err or '(no stderr)'}"


class CommandTimeout(Exception):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{argv[0]} did not answer within {timeout:g} s")
        self.argv = tuple(argv)


def slurm_environment(slurm_conf: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Slurm client: ours, plus ``SLURM_CONF`` when configured.

    Without a ``SLURM_CONF`` (or /etc/slurm/slurm.conf) a Slurm client looks its controller up in DNS.
    """
    env = dict(os.environ)
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    env.setdefault("LC_ALL", "C")
    if extra:
        env.update(extra)
    return env


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str],
    stdin: bytes | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run ``argv`` without a shell; kill it (and report a timeout) if it outlives ``timeout`` seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):  # not wait_for: on Python 3.11 it can drop a cancel
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        await _stop(proc)
        raise CommandTimeout(argv, timeout) from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            await _stop(proc)
        raise
    assert proc.returncode is not None
    return CommandResult(
        argv=tuple(argv),
        returncode=proc.returncode,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        seconds=time.monotonic() - started,
    )


# After SIGTERM, how long a timed-out command (and, through sudo, the tool it runs) may take to exit.
STOP_GRACE = 1.0


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """End a command that overran: SIGTERM to its process group first, which sudo relays to the tool it
    runs (a SIGKILL to sudo alone would leave sbatch running as the owner), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
            return
        except TimeoutError:
            continue
    await proc.wait()


@dataclass(frozen=True)
class SlurmTools:
    """Where Slurm's commands live and how one is run, as the daemon's user or as a job's owner.

    >>> SlurmTools(bin_dir="/opt/slurm/bin", slurm_conf="/etc/slurm/slurm.conf").command("scancel", ["7"], user="donna")
    ['sudo', '-n', '-u', 'donna', 'SLURM_CONF=/etc/slurm/slurm.conf', '--', '/opt/slurm/bin/scancel', '7']

    Running as the owner is ``sudo -n -u <user> [SLURM_CONF=...] -- <tool> ...``: no env(1), so a
    sudoers rule naming only sbatch and scancel suffices. sudo resets the environment, so SLURM_CONF
    is passed on sudo's command line, where sudo refuses it loudly unless the rule keeps it
    (``env_keep``), instead of dropping it silently and letting sbatch find another cluster's
    configuration. A job's own variables travel in a file (``sbatch --export-file``), not here.
    """

    bin_dir: str = ""  # "" = find the tools on PATH (sudo: on its secure_path)
    slurm_conf: str | None = None
    timeout: float = 30.0

    @property
    def environment(self) -> dict[str, str]:
        """The daemon's environment with ``SLURM_CONF`` (sudo replaces it: see ``command``)."""
        return slurm_environment(self.slurm_conf)

    def path(self, tool: str) -> str:
        """The program to execute for ``tool``: ``<bin_dir>/<tool>``, or the bare name for PATH."""
        return os.path.join(self.bin_dir, tool) if self.bin_dir else tool

    def command(self, tool: str, args: Sequence[str], *, user: str | None = None) -> list[str]:
        """The argument list that runs ``tool args`` as the daemon's user, or through sudo as ``user``."""
        argv = [self.path(tool), *args]
        if user is None:
            return argv
        conf = [f"SLURM_CONF={self.slurm_conf}"] if self.slurm_conf else []
        return ["sudo", "-n", "-u", user, *conf, "--", *argv]

    async def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        user: str | None = None,
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run ``tool``; raises ``CommandTimeout`` if it hangs and ``OSError`` if it cannot be started."""
        argv = self.command(tool, args, user=user)
        return await run_command(argv, timeout=timeout or self.timeout, env=self.environment, cwd=cwd)
