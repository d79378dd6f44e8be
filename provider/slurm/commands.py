"""The command backend: squeue and sacct, one call each per pass, for any number of jobs."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

import structlog

from provider.slurm.parse import SACCT_FIELDS, SQUEUE_FIELDS, UNIT_SEPARATOR, ParseError, parse_sacct, parse_squeue
from provider.slurm.process import CommandResult, CommandTimeout, run_command, slurm_environment
from provider.slurm.types import QueryResult, SlurmJob, is_valid_slurm_id

log = structlog.get_logger(__name__)

# sacct takes the ids on its command line; stay far below the kernel's argument limit.
SACCT_IDS_PER_CALL = 5000


def squeue_argv(squeue: str = "squeue") -> list[str]:
    """All jobs slurmctld holds, finished ones included (``-t all``), in every partition (``-a``)."""
    spec = ",".join(f"{name}:0{UNIT_SEPARATOR}" for name in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:0"
    return [squeue, "--noheader", "--all", "--states=all", "--Format", spec]


def sacct_argv(slurm_ids: Sequence[str], sacct: str = "sacct") -> list[str]:
    """Allocation rows (``-X``) of the given ids; ``-j`` also makes the time window start at the epoch."""
    return [
        sacct,
        "--noheader",
        "--parsable2",
        "--allocations",
        "--allusers",
        f"--delimiter={UNIT_SEPARATOR}",
        "--format=" + ",".join(SACCT_FIELDS),
        "--jobs=" + ",".join(slurm_ids),
    ]


class CommandBackend:
    """Queries Slurm through its command-line tools under a timeout.

    A non-zero exit, an ``error`` on stderr, a timeout or output that does not parse all give
    ``QueryResult.failed``: the reconciler then changes nothing.
    """

    name = "cli"

    def __init__(self, *, slurm_conf: str | None = None, timeout: float = 30.0, bin_dir: str = "") -> None:
        self._env = slurm_environment(slurm_conf)
        self._timeout = timeout
        self._bin = bin_dir.rstrip("/") + "/" if bin_dir else ""
        self.calls: Counter[str] = Counter()
        self.accounting_disabled = False

    async def _run(self, command: str, argv: list[str]) -> CommandResult | str:
        self.calls[command] += 1
        try:
            result = await run_command(argv, timeout=self._timeout, env=self._env)
        except CommandTimeout as exc:
            log.warning("slurm.query_timeout", command=command, timeout=self._timeout)
            return str(exc)
        except OSError as exc:
            log.error("slurm.query_not_started", command=command, error=str(exc))
            return f"{command} could not be started: {exc}"
        log.debug("slurm.query", command=command, rc=result.returncode, seconds=round(result.seconds, 3))
        return result

    async def live_jobs(self) -> QueryResult:
        result = await self._run("squeue", squeue_argv(self._bin + "squeue"))
        if isinstance(result, str):
            return QueryResult.failed(result)
        if not result.ok:
            log.warning("slurm.query_failed", command="squeue", error=result.describe())
            return QueryResult.failed(result.describe())
        return self._parsed("squeue", lambda: parse_squeue(result.stdout))

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        ids = sorted({i for i in slurm_ids if is_valid_slurm_id(i)})
        if not ids:
            return QueryResult.of([])
        jobs: list[SlurmJob] = []
        for start in range(0, len(ids), SACCT_IDS_PER_CALL):
            chunk = ids[start : start + SACCT_IDS_PER_CALL]
            result = await self._run("sacct", sacct_argv(chunk, self._bin + "sacct"))
            if isinstance(result, str):
                return QueryResult.failed(result)
            if "accounting storage is disabled" in result.stderr.lower():
                # No slurmdbd: nothing to ask. The missing-job verdict rests on the debounce alone.
                if not self.accounting_disabled:
                    log.warning("slurm.accounting_disabled", detail=result.stderr.strip())
                self.accounting_disabled = True
                return QueryResult.of([])
            if not result.ok:
                log.warning("slurm.query_failed", command="sacct", error=result.describe())
                return QueryResult.failed(result.describe())
            parsed = self._parsed("sacct", lambda: parse_sacct(result.stdout))
            if not parsed.ok:
                return parsed
            jobs.extend({id(j): j for j in parsed.jobs.values()}.values())
        return QueryResult.of(jobs)

    @staticmethod
    def _parsed(command: str, parse: Callable[[], list[SlurmJob]]) -> QueryResult:
        started = time.monotonic()
        try:
            jobs = parse()
        except ParseError as exc:
            log.error("slurm.unparsable_output", command=command, error=str(exc))
            return QueryResult.failed(f"{command} output could not be parsed: {exc}")
        log.debug("slurm.parsed", command=command, jobs=len(jobs), seconds=round(time.monotonic() - started, 4))
        return QueryResult.of(jobs)

