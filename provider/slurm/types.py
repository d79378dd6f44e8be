"""Plain data for what Slurm says about a job, shared by every backend (commands or pyslurm)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# A Slurm job id as the daemon stores it: a raw numeric id, or an array task `<array id>_<task>`.
SLURM_ID_PATTERN = re.compile(r"^[1-9][0-9]{0,9}(_[0-9]{1,9})?$")


def is_valid_slurm_id(value: str) -> bool:
    return bool(SLURM_ID_PATTERN.match(value))


def valid_slurm_ids(values: Iterable[str]) -> list[str]:
    """The distinct valid ids among ``values``, sorted (``is_valid_slurm_id`` at C speed: a pass
    asks sacct about thousands)."""
    return sorted(set(filter(SLURM_ID_PATTERN.match, values)))


# Flags that Slurm prints in place of (or beside) a base state. squeue's %T shows the flag name
# (COMPLETING) instead of the base state; JSON lists base state and flags together.
STATE_FLAGS = frozenset(
    {
        "COMPLETING",
        "CONFIGURING",
        "EXPEDITING",
        "LAUNCH_FAILED",
        "POWER_UP_NODE",
        "RECONFIG_FAIL",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "RESV_DEL_HOLD",
        "REVOKED",
        "SIGNALING",
        "SPECIAL_EXIT",
        "STAGE_OUT",
        "STOPPED",
        "UPDATE_DB",
    }
)

BASE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)

# Base states a job never leaves (unless requeued): its accounting record is its last word.
FINISHED_BASE_STATES = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
)


@dataclass(frozen=True, slots=True)
class SlurmState:
    """A Slurm job state split into its base state and flags.

    Text forms seen in the wild: ``RUNNING``, ``COMPLETING`` (a flag shown alone), ``CANCELLED by 0``
    (sacct names the uid), ``FAILED+`` (a truncated column). ``base`` is empty when only flags were
    printed; ``raw`` keeps the original for logs.
    """

    base: str
    flags: frozenset[str] = frozenset()
    cancelled_by: int | None = None
    raw: str = ""

    @property
    def label(self) -> str:
        """The most telling single word: the base state, or else the first flag."""
        if self.base:
            return self.base
        return min(self.flags) if self.flags else ""


def parse_state(text: str | list[str]) -> SlurmState:
    """Parse a Slurm state as text (``CANCELLED by 0``) or as a JSON list (``["RUNNING","COMPLETING"]``)."""
    raw = text if isinstance(text, str) else ",".join(text)
    words = text.split() if isinstance(text, str) else [w for item in text for w in str(item).split()]
    cancelled_by: int | None = None
    if len(words) >= 3 and words[0].upper() == "CANCELLED" and words[1] == "by":
        try:
            cancelled_by = int(words[2])
        except ValueError:
            cancelled_by = None
        words = words[:1]
    base = ""
    flags: set[str] = set()
    for word in words:
        token = word.strip().rstrip("+").upper()
        if not token or token == "BY":
            continue
        if token in STATE_FLAGS:
            flags.add(token)
        elif not base:
            base = token
        else:
            flags.add(token)
    return SlurmState(base=base, flags=frozenset(flags), cancelled_by=cancelled_by, raw=raw)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a job's batch script ended: an exit code, or the signal that killed it."""

    code: int = 0
    signal: int = 0
    ambiguous: bool = False  # pyslurm reports codes of 128 and more as code - 128

    @classmethod
    def from_sacct(cls, text: str) -> ExitStatus | None:
        """sacct's ``ExitCode`` column is ``code:signal``."""
        code, sep, sig = text.strip().partition(":")
        if not sep:
            return None
        try:
            return cls(code=int(code), signal=int(sig))
        except ValueError:
            return None

    @classmethod
    def from_wait_status(cls, text: str) -> ExitStatus | None:
        """squeue's ``exit_code`` field is the raw wait status: code = v >> 8, signal = v & 0x7f."""
        try:
            value = int(text.strip())
        except ValueError:
            return None
        if value < 0:
            return None
        return cls(code=(value >> 8) & 0xFF, signal=value & 0x7F)

    @classmethod
    def from_squeue(cls, text: str) -> ExitStatus | None:
        """squeue's ``exit_code``: a raw wait status up to Slurm 23.x, ``code:signal`` since 24.x."""
        return cls.from_sacct(text) if ":" in text else cls.from_wait_status(text)

    def describe(self) -> str:
        if self.signal:
            return f"killed by signal {self.signal}"
        if self.ambiguous:
            return f"exit code {self.code} or {self.code + 128}"
        return f"exit code {self.code}"


class SlurmJob(NamedTuple):
    """One job as a Slurm query reported it.

    A NamedTuple, as the other records a pass makes per job (see ``provider.reconcile.TrackedJob``).
    """

    job_id: str
    state: SlurmState
    name: str = ""
    array_job_id: str | None = None
    array_task_id: str | None = None
    reason: str = ""
    exit_status: ExitStatus | None = None
    comment: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        return job_keys(self.job_id, self.array_job_id, self.array_task_id)


def job_keys(job_id: str, array_job_id: str | None, array_task_id: str | None) -> tuple[str, ...]:
    """Every id a job answers to: the raw id and, for an array task, ``<array id>_<task>``."""
    if array_job_id and array_task_id and array_task_id.isdigit():
        return (job_id, f"{array_job_id}_{array_task_id}")
    return (job_id,)


@dataclass(frozen=True)
class QueryResult:
    """The outcome of one Slurm query: the jobs it listed, keyed by every id they answer to.

    ``ok`` is False when the query failed or timed out; then ``jobs`` is empty and means nothing.
    """

    ok: bool
    jobs: Mapping[str, SlurmJob] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def failed(cls, error: str) -> QueryResult:
        return cls(ok=False, error=error)

    @classmethod
    def of(cls, jobs: list[SlurmJob]) -> QueryResult:
        index: dict[str, SlurmJob] = {}
        for job in jobs:
            for key in job.keys:
                index.setdefault(key, job)
        return cls(ok=True, jobs=index)
