"""The Slurm -> UCloud state table, with admin overrides: the bridge between the two worlds.

It lives beside the reconciliation rules rather than in ``provider.slurm``, so that ``slurm/`` speaks
only Slurm. README.md ("Slurm → UCloud states") shows the table to admins.

Every Slurm state has an explicit row. ``KEEP`` means "this says nothing final yet": the job keeps the
state UCloud/Core already has (COMPLETING hides whether the job failed; an unmapped state is logged and
kept, never guessed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from provider.slurm.types import ExitStatus, SlurmJob, SlurmState
from provider.ucloud.models import JobState

KEEP: Final = "KEEP"

# Slurm state (base state or flag) -> UCloud state, or KEEP.
DEFAULT_TABLE: Final[Mapping[str, JobState | str]] = {
    "PENDING": JobState.IN_QUEUE,
    "CONFIGURING": JobState.IN_QUEUE,
    "POWER_UP_NODE": JobState.IN_QUEUE,
    "REQUEUED": JobState.IN_QUEUE,
    "REQUEUE_HOLD": JobState.IN_QUEUE,
    "REQUEUE_FED": JobState.IN_QUEUE,
    "SPECIAL_EXIT": JobState.IN_QUEUE,
    "RESV_DEL_HOLD": JobState.IN_QUEUE,
    "EXPEDITING": JobState.IN_QUEUE,
    "RUNNING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETING": KEEP,
    "STAGE_OUT": KEEP,
    "SIGNALING": KEEP,
    "RESIZING": KEEP,
    "UPDATE_DB": KEEP,
    "SUSPENDED": JobState.SUSPENDED,
    "COMPLETED": JobState.SUCCESS,
    "CANCELLED": JobState.SUCCESS,
    "FAILED": JobState.FAILURE,
    "OUT_OF_MEMORY": JobState.FAILURE,
    "TIMEOUT": JobState.EXPIRED,
    "DEADLINE": JobState.FAILURE,
    "NODE_FAIL": JobState.FAILURE,
    "PREEMPTED": JobState.FAILURE,
    "BOOT_FAIL": JobState.FAILURE,
    "REVOKED": JobState.FAILURE,
    "LAUNCH_FAILED": JobState.FAILURE,
    "RECONFIG_FAIL": JobState.FAILURE,
}

# Flags that outrank the base state: while they are set, the base state is not the whole story.
_DOMINANT_FLAGS: Final = (
    "COMPLETING",
    "STAGE_OUT",
    "SIGNALING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SPECIAL_EXIT",
    "RESV_DEL_HOLD",
    "CONFIGURING",
    "POWER_UP_NODE",
    "RESIZING",
    "STOPPED",
    "REVOKED",
)


@dataclass(frozen=True)
class Mapped:
    """What a Slurm state means for UCloud: a state (``None`` = keep the current one) and a status line."""

    state: JobState | None
    status: str
    slurm_label: str
    mapped: bool = True  # False when the Slurm state is not in the table at all


class StateTable:
    """The default table with the admin's overrides from ``[slurm.states]`` applied.

    >>> StateTable({"FAILED": "SUCCESS"}).map(SlurmJob("7", parse_state("FAILED"))).state
    <JobState.SUCCESS: 'SUCCESS'>
    """

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        table: dict[str, JobState | str] = dict(DEFAULT_TABLE)
        for slurm_state, target in (overrides or {}).items():
            table[slurm_state.upper()] = KEEP if target.upper() == KEEP else JobState(target.upper())
        self._table = table
        self._seen: dict[tuple[SlurmState, str, ExitStatus | None], Mapped] = {}

    def target(self, slurm_state: str) -> JobState | str | None:
        return self._table.get(slurm_state)

    def map(self, job: SlurmJob) -> Mapped:
        """What ``job``'s state means for UCloud. It depends on the state, the reason and the exit status
        only, and a pass maps thousands of jobs in a handful of distinct ones: each is worked out once."""
        key = (job.state, job.reason, job.exit_status)
        mapped = self._seen.get(key)
        if mapped is None:
            if len(self._seen) > 4096:  # reasons vary without bound on a busy cluster
                self._seen.clear()
            mapped = self._seen[key] = self._map(job)
        return mapped

    def _map(self, job: SlurmJob) -> Mapped:
        state = job.state
        key = _deciding_word(state)
        target = self._table.get(key)
        if target is None:
            return Mapped(None, f"Slurm reports an unknown job state ({state.raw})", key, mapped=False)
        if target == KEEP:
            return Mapped(None, f"Your job is about to change state ({key})", key)
        assert isinstance(target, JobState)
        return Mapped(target, status_message(target, key, job), key)


def _deciding_word(state: SlurmState) -> str:
    for flag in _DOMINANT_FLAGS:
        if flag in state.flags:
            return flag
    return state.label


def status_message(target: JobState, slurm_label: str, job: SlurmJob) -> str:
    """The status line shown to the user for a state change."""
    if target is JobState.IN_QUEUE:
        reason = job.reason if job.reason and job.reason not in ("None", "(null)") else ""
        if slurm_label != "PENDING":
            return f"Your job is currently in the queue ({slurm_label})"
        return f"Your job is currently in the queue ({reason})" if reason else "Your job is currently in the queue"
    if target is JobState.RUNNING:
        return "Your job is now running"
    if target is JobState.SUSPENDED:
        return "Your job has been suspended by Slurm"
    if target is JobState.EXPIRED:
        return f"Your job has expired: it reached its time limit ({slurm_label})"
    if target is JobState.SUCCESS:
        if slurm_label == "CANCELLED":
            who = f" by uid {job.state.cancelled_by}" if job.state.cancelled_by is not None else ""
            return f"Your job was cancelled{who}"
        if slurm_label == "COMPLETED":
            return "Your job has successfully completed"
        return f"Your job has completed (Slurm state {slurm_label})"
    # FAILURE
    detail = f", {job.exit_status.describe()}" if job.exit_status and slurm_label == "FAILED" else ""
    if slurm_label == "OUT_OF_MEMORY":
        return "Your job was terminated because it ran out of memory"
    if slurm_label == "FAILED":
        return f"Your job has failed (Slurm state FAILED{detail})"
    return f"Your job has failed (Slurm state {slurm_label})"
