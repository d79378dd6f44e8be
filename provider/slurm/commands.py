"""The command backend: squeue and sacct, one call each per pass, for any number of jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import structlog

from provider.accounting import UsageRecord
from provider.slurm.backend import QueryBook
from provider.slurm.parse import (
    SACCT_FIELDS,
    SACCT_USAGE_FIELDS,
    SQUEUE_FIELDS,
    UNIT_SEPARATOR,
    ParseError,
    SqueueIndex,
    index_squeue,
    parse_sacct,
    parse_sacct_usage,
)
from provider.slurm.process import CommandTimeout, SlurmTools
from provider.slurm.types import QueryResult, SlurmJob, valid_slurm_ids

log = structlog.get_logger(__name__)

# sacct takes the ids in one argument (--jobs=a,b,...), and Linux caps one argument at 128 KiB
# (MAX_ARG_STRLEN): one call holds up to 100,000 characters of ids, some 14,000 seven-digit ids.
SACCT_ID_CHARS_PER_CALL = 100_000


def id_chunks(ids: Sequence[str], limit: int = SACCT_ID_CHARS_PER_CALL) -> list[list[str]]:
    """The ids in as few sacct calls as the argument limit allows: one, unless there are very many."""
    chunks: list[list[str]] = []
    current: list[str] = []
    length = 0
    for slurm_id in ids:
        if current and length + len(slurm_id) + 1 > limit:
            chunks.append(current)
            current, length = [], 0
        current.append(slurm_id)
        length += len(slurm_id) + 1
    if current:
        chunks.append(current)
    return chunks

Parsed = TypeVar("Parsed")  # what a parser makes of a command's output


def squeue_args() -> list[str]:
    """All jobs slurmctld holds, finished ones included (``-t all``), in every partition (``-a``)."""
    spec = ",".join(f"{name}:0{UNIT_SEPARATOR}" for name in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:0"
    return ["--noheader", "--all", "--states=all", "--Format", spec]


def sacct_args(slurm_ids: Sequence[str]) -> list[str]:
    """Allocation rows (``-X``) of the given ids; ``-j`` also makes the time window start at the epoch."""
    return [
        "--noheader",
        "--parsable2",
        "--allocations",
        "--allusers",
        f"--delimiter={UNIT_SEPARATOR}",
        "--format=" + ",".join(SACCT_FIELDS),
        "--jobs=" + ",".join(slurm_ids),
    ]


def squeue_argv(squeue: str = "squeue") -> list[str]:
    """``squeue_args`` behind a program path (bench/ runs the raw command beside the backend)."""
    return [squeue, *squeue_args()]


def sacct_argv(slurm_ids: Sequence[str], sacct: str = "sacct") -> list[str]:
    return [sacct, *sacct_args(slurm_ids)]


def sacct_usage_args(slurm_ids: Sequence[str]) -> list[str]:
    """Elapsed seconds and allocated resources of the given ids (allocation rows, any user, any time)."""
    return [
        "--noheader",
        "--parsable2",
        "--allocations",
        "--allusers",
        f"--delimiter={UNIT_SEPARATOR}",
        "--format=" + ",".join(SACCT_USAGE_FIELDS),
        "--jobs=" + ",".join(slurm_ids),
    ]


class CommandBackend(QueryBook):
    """Queries Slurm through its command-line tools under a timeout.

    A non-zero exit, an ``error`` on stderr, a timeout or output that does not parse all give
    ``QueryResult.failed``: the reconciler then changes nothing.
    """

    name = "cli"

    def __init__(self, *, slurm_conf: str | None = None, timeout: float = 30.0, bin_dir: str = "") -> None:
        super().__init__()
        self._tools = SlurmTools(bin_dir=bin_dir, slurm_conf=slurm_conf, timeout=timeout)
        self._timeout = timeout
        self.accounting_disabled = False
        self._last_squeue: SqueueIndex | None = None  # the latest answer: the next one starts from it

    async def _query(
        self, command: str, args: list[str], parse: Callable[[str], Parsed], *, tool: str = ""
    ) -> Parsed | str:
        """The rows the command listed, or a sentence saying why its answer means nothing. ``command`` names
        the query in the counters; ``tool`` is the Slurm program that runs it (``command`` if empty)."""
        return await self.counted(command, lambda: self._run_and_parse(command, tool or command, args, parse))

    async def _run_and_parse(
        self, command: str, tool: str, args: list[str], parse: Callable[[str], Parsed]
    ) -> Parsed | str:
        try:
            result = await self._tools.run(tool, args)
        except CommandTimeout as exc:
            log.warning("slurm.query_timeout", command=command, timeout=self._timeout)
            return str(exc)
        except OSError as exc:
            log.error("slurm.query_not_started", command=command, error=str(exc))
            return f"{command} could not be started: {exc}"
        log.debug("slurm.query", command=command, rc=result.returncode, seconds=round(result.seconds, 3))
        if command.startswith("sacct") and "accounting storage is disabled" in result.stderr.lower():
            # No slurmdbd: nothing to ask. The missing-job verdict rests on the debounce alone.
            if not self.accounting_disabled:
                log.warning("slurm.accounting_disabled", detail=result.stderr.strip())
            self.accounting_disabled = True
            return parse("")  # the empty answer, in the parser's own shape
        if not result.ok:
            log.warning("slurm.query_failed", command=command, error=result.describe())
            return result.describe()
        try:
            return parse(result.stdout)
        except ParseError as exc:
            log.error("slurm.unparsable_output", command=command, error=str(exc))
            return f"{command} output could not be parsed: {exc}"

    async def live_jobs(self) -> QueryResult:
        jobs = await self._query("squeue", squeue_args(), lambda text: index_squeue(text, previous=self._last_squeue))
        if isinstance(jobs, str):
            return QueryResult.failed(jobs)
        self._last_squeue = jobs  # its ``made`` fills as this answer is looked up
        return QueryResult(ok=True, jobs=jobs)

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        ids = valid_slurm_ids(slurm_ids)
        found: list[SlurmJob] = []
        for chunk in id_chunks(ids):
            jobs = await self._query("sacct", sacct_args(chunk), parse_sacct)
            if isinstance(jobs, str):
                return QueryResult.failed(jobs)
            found.extend(jobs)
        return QueryResult.of(found)

    async def usage_records(self, slurm_ids: Sequence[str]) -> dict[str, UsageRecord] | str:
        """Usage accounting's one sacct a pass (ids split only beyond ``SACCT_ID_CHARS_PER_CALL``):
        every record keyed by each id it answers to, or a sentence saying why the answer means nothing.
        Counted as the command ``sacct_usage``."""
        ids = valid_slurm_ids(slurm_ids)
        found: dict[str, UsageRecord] = {}
        for chunk in id_chunks(ids):
            records = await self._query("sacct_usage", sacct_usage_args(chunk), parse_sacct_usage, tool="sacct")
            if isinstance(records, str):
                return records
            if self.accounting_disabled:
                return "Slurm has no accounting storage (slurmdbd): usage cannot be counted"
            for record in records:
                for key in record.keys:
                    found.setdefault(key, record)
        return found
