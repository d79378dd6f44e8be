"""The interface every Slurm backend offers the reconciler: one live query and one history query."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from provider.slurm.types import QueryResult


class SlurmBackend(Protocol):
    """What the reconciler needs from Slurm, whatever speaks to it.

    Both queries cover *all* the jobs of a pass in one call (Slurm's man pages warn that per-job
    squeue/sacct loops can deny service to slurmctld). A query that fails or times out returns
    ``QueryResult.failed``: that says nothing about any job.
    """

    name: str
    calls: Counter[str]  # queries run, by command
    failures: Counter[str]  # queries that failed or timed out, by command
    last_error: dict[str, str]  # command -> why its latest run failed ("" = it worked)
    observer: Callable[[str, float], None]  # told each query's command and wall time

    async def live_jobs(self) -> QueryResult:
        """Every job slurmctld still holds, finished ones included (until MinJobAge).

        The answer's ``jobs`` may be the very mapping of an earlier answer only if slurmctld's answer
        is unchanged since (``CommandBackend`` does so for a quiet cluster): a pass then repeats the
        decisions it settled with that mapping without looking its jobs up again."""
        ...

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        """The accounting records (slurmdbd) of the given ids, from any point in time."""
        ...


T = TypeVar("T")


class QueryBook:
    """What every backend records about its queries, for /metrics and /readyz: one place, one rule.

    A query's outcome is its result, or a string saying why it failed.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}  # command -> why its latest run failed ("" = it worked)
        self.observer: Callable[[str, float], None] = lambda command, seconds: None

    async def counted(self, command: str, run: Callable[[], Awaitable[T | str]]) -> T | str:
        self.calls[command] += 1
        started = time.monotonic()
        outcome = await run()
        self.observer(command, time.monotonic() - started)
        if isinstance(outcome, str):
            self.failures[command] += 1
        self.last_error[command] = outcome if isinstance(outcome, str) else ""
        return outcome
