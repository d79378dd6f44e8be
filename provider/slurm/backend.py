"""The interface every Slurm backend offers the reconciler: one live query and one history query."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

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
        """Every job slurmctld still holds, finished ones included (until MinJobAge)."""
        ...

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        """The accounting records (slurmdbd) of the given ids, from any point in time."""
        ...
