"""Running one Slurm command: an argument list (never a shell string), a timeout, a clean environment."""

from __future__ import annotations

import asyncio
import os
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
        proc.kill()
        await proc.wait()
        raise CommandTimeout(argv, timeout) from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return CommandResult(
        argv=tuple(argv),
        returncode=proc.returncode,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        seconds=time.monotonic() - started,
    )
