"""The reconciliation rules: (what Core believes, what we track, what Slurm says) -> what to tell Core.

Pure functions over plain data. No I/O and no clock: ``now`` (Unix milliseconds) is passed in, so
every rule is tested on its own. The caller (``provider.sync``) runs the Slurm queries, stores the
decisions and queues the updates.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from provider.slurm.types import FINISHED_BASE_STATES, QueryResult, SlurmJob
from provider.states import StateTable
from provider.ucloud.models import NO_LONGER_AVAILABLE, JobState, JobUpdate


class TrackedJob(NamedTuple):
    """One row of the job map: a UCloud job and the Slurm job that runs it.

    This and the other records a pass makes per job (``Observation``, ``Decision``, and the
    ``SlurmJob`` it looks at) are NamedTuples: immutable, and made in C. A frozen dataclass sets
    each field through ``object.__setattr__`` (1 us for these eleven, against 0.2 for a tuple), and a
    first pass over 10,000 jobs makes some 50,000 of them.
    """

    ucloud_id: str
    slurm_id: str
    cluster: str
    expected_name: str | None  # the Slurm job name that proves the id is still ours; None = not checked
    submitted_at: int  # ms
    state: JobState  # the state the provider last decided for Core
    status: str | None = None
    slurm_state: str | None = None
    miss_count: int = 0
    first_missed_at: int | None = None  # ms; when the current run of misses began
    unix_user: str | None = None  # who submitted it, when jobs run as their owner


@dataclass(frozen=True, slots=True)
class DebounceRules:
    """When a job absent from Slurm counts as gone: all three must hold.

    ``checks`` consecutive successful passes without it, spanning ``window_ms``, and the job submitted at
    least ``min_age_ms`` ago (sacct lags behind submission by seconds; after a slurmdbd outage by more).
    """

    checks: int = 3
    window_ms: int = 120_000
    min_age_ms: int = 300_000


class Seen(enum.Enum):
    FOUND = "found"
    MISSING = "missing"  # both queries succeeded and neither lists the job (as ours)
    UNKNOWN = "unknown"  # a query failed: no evidence either way


class Observation(NamedTuple):
    seen: Seen
    job: SlurmJob | None = None
    source: str = ""
    detail: str = ""


class Decision(NamedTuple):
    """The outcome for one job: the new tracked row (if tracked), the update for Core (if any), and why."""

    ucloud_id: str
    reason: str
    update: JobUpdate | None = None
    tracked: TrackedJob | None = None
    recheck: bool = False  # a confirming check should follow soon (debounce, grace period)
    unmapped_state: str | None = None  # a Slurm state the table does not know: an admin should look
    changed: bool = True  # ``tracked`` differs from the row the pass read: the store must write it


def listed_as_ours(job: TrackedJob, live: QueryResult) -> SlurmJob | None:
    """The job as slurmctld lists it, if it lists it as ours; None when sacct must be asked."""
    return slurm_job_if_ours(job, live.jobs.get(job.slurm_id)) if live.ok else None


def split_by_listing(jobs: Iterable[TrackedJob], live: QueryResult) -> tuple[list[tuple[TrackedJob, SlurmJob]], list[TrackedJob]]:
    """The jobs slurmctld lists as ours, each with what it lists, and the others (sacct must be asked):
    one lookup per job, so a pass can start sacct as soon as squeue has answered."""
    listed: list[tuple[TrackedJob, SlurmJob]] = []
    unlisted: list[TrackedJob] = []
    if not live.ok:
        return listed, list(jobs)
    lookup = live.jobs.get
    for job in jobs:
        found = slurm_job_if_ours(job, lookup(job.slurm_id))
        if found is None:
            unlisted.append(job)
        else:
            listed.append((job, found))
    return listed, unlisted


def observe_listed(found: SlurmJob) -> Observation:
    """What a job slurmctld lists as ours is: slurmctld's word is the truth."""
    return Observation(Seen.FOUND, found, "squeue")


def observe(job: TrackedJob, live: QueryResult, history: QueryResult | None) -> Observation:
    """Combine the live (squeue) and history (sacct) answers into one observation of ``job``.

    - slurmctld lists the job: that is the truth.
    - slurmctld could not be asked: only a *final* accounting record counts (a live state from sacct may
      lag behind, e.g. PENDING for a job that already runs).
    - slurmctld does not list it: accounting decides; a non-final accounting record of a job slurmctld
      no longer holds is a stale record (a wiped controller), so the job is missing.
    """
    found = listed_as_ours(job, live)
    if found is not None:
        return observe_listed(found)
    return observe_unlisted(job, live, history)


def observe_unlisted(job: TrackedJob, live: QueryResult, history: QueryResult | None) -> Observation:
    """``observe`` for a job slurmctld does not list as ours (or could not be asked about)."""
    if history is None or not history.ok:
        failed = live if not live.ok else history
        why = failed.error if failed is not None else "sacct was not asked"
        return Observation(Seen.UNKNOWN, detail=why)
    record = history.jobs.get(job.slurm_id)
    other = record is not None and slurm_job_if_ours(job, record) is None
    record = slurm_job_if_ours(job, record)
    if record is not None and _is_final_record(record):
        return Observation(Seen.FOUND, record, "sacct")
    if not live.ok:
        return Observation(Seen.UNKNOWN, detail=f"the live query failed ({live.error}); accounting has no final record")
    if other:
        return Observation(Seen.MISSING, detail=f"Slurm id {job.slurm_id} now belongs to another job")
    if record is not None:
        return Observation(
            Seen.MISSING,
            detail=f"accounting still says {record.state.label} but slurmctld no longer knows the job",
        )
    return Observation(Seen.MISSING, detail="neither squeue nor sacct lists the job")


def slurm_job_if_ours(job: TrackedJob, found: SlurmJob | None) -> SlurmJob | None:
    """The identity rule: a Slurm job is this UCloud job's only if it carries the name the provider gave
    it (its UCloud id), since Slurm ids wrap and a wiped slurmctld starts again at 1.

    Jobs tracked before names were recorded (``expected_name`` None) are taken on their id alone.
    """
    if found is None:
        return None
    if job.expected_name is not None and found.name != job.expected_name:
        return None
    return found


def _is_final_record(job: SlurmJob) -> bool:
    return job.state.base in FINISHED_BASE_STATES and "REQUEUED" not in job.state.flags


def decide_tracked(
    job: TrackedJob,
    believed: JobState | None,
    observation: Observation,
    table: StateTable,
    rules: DebounceRules,
    now: int,
) -> Decision:
    """Decide what Core must hear about a tracked job.

    ``believed`` is the state Core reported (verify); ``None`` means "what we last told Core" (monitor).
    """
    core_state = believed or job.state
    if job.state.is_final:
        if core_state != job.state:
            return Decision(
                job.ucloud_id,
                f"already {job.state.value} here; Core still believes {core_state.value}: resending",
                update=_update(job.state, job.status or "", core_state, now),
                tracked=job,
                changed=False,
            )
        return Decision(job.ucloud_id, f"final ({job.state.value}); nothing to do", tracked=job, changed=False)

    if observation.seen is Seen.UNKNOWN:
        reason = f"Slurm could not be asked, nothing changes: {observation.detail}"
        return Decision(job.ucloud_id, reason, tracked=job, recheck=True, changed=False)

    if observation.seen is Seen.MISSING:
        misses = job.miss_count + 1
        first = job.first_missed_at if job.first_missed_at is not None else now
        missing = _missed(job, misses, first)
        gone = (
            misses >= rules.checks
            and now - first >= rules.window_ms
            and now - job.submitted_at >= rules.min_age_ms
        )
        if not gone:
            reason = _waiting_to_confirm(observation.detail, misses, rules.checks)
            return Decision(job.ucloud_id, reason, tracked=missing, recheck=True)
        final = missing._replace(state=JobState.FAILURE, status=NO_LONGER_AVAILABLE, slurm_state=None)
        return Decision(
            job.ucloud_id,
            f"missing from Slurm in {misses} checks over {(now - first) // 1000} s ({observation.detail})",
            update=_no_longer_available(now),
            tracked=final,
        )

    assert observation.job is not None
    mapped = table.map(observation.job)
    raw = observation.job.state.raw
    # Most jobs of most passes are as they were: keep the same row (no copy, nothing to write).
    as_before = job.slurm_state == raw and job.miss_count == 0 and job.first_missed_at is None
    reason = _found_reason(observation.source, raw, core_state, mapped.state, mapped.mapped)
    if mapped.state is None:
        seen = job if as_before else _listed(job, job.state, job.status, raw)
        unmapped = None if mapped.mapped else raw
        return Decision(job.ucloud_id, reason, tracked=seen, unmapped_state=unmapped, changed=seen is not job)
    if as_before and job.state == mapped.state and job.status == mapped.status:
        tracked = job
    else:
        tracked = _listed(job, mapped.state, mapped.status, raw)
    if mapped.state == core_state:
        return Decision(job.ucloud_id, reason, tracked=tracked, changed=tracked is not job)
    update = _update(mapped.state, mapped.status, core_state, now)
    return Decision(job.ucloud_id, reason, update=update, tracked=tracked, changed=tracked is not job)


@functools.lru_cache(maxsize=256)
def _found_reason(source: str, raw: str, core_state: JobState, mapped: JobState | None, known: bool) -> str:
    """Why a job Slurm listed was decided so. Thousands of jobs a pass share a handful of these."""
    said = f"{source} says {raw or '(empty)'}"
    if mapped is None:
        return f"{said}: not decided yet" if known else f"{said}: unmapped Slurm state, keeping the current state"
    if mapped == core_state:
        return f"{said}: Core already has {core_state.value}"
    return f"{said}: {core_state.value} -> {mapped.value}"


def _listed(job: TrackedJob, state: JobState, status: str | None, slurm_state: str) -> TrackedJob:
    """The row of a job Slurm listed (any run of misses is over), in its decided state. Built directly:
    dataclasses.replace is several times slower, and a first pass builds one per job."""
    return TrackedJob(
        job.ucloud_id, job.slurm_id, job.cluster, job.expected_name, job.submitted_at, state, status,
        slurm_state, 0, None, job.unix_user,
    )


def _missed(job: TrackedJob, misses: int, first_missed_at: int) -> TrackedJob:
    return TrackedJob(
        job.ucloud_id, job.slurm_id, job.cluster, job.expected_name, job.submitted_at, job.state, job.status,
        job.slurm_state, misses, first_missed_at, job.unix_user,
    )


@functools.lru_cache(maxsize=64)
def _waiting_to_confirm(detail: str, misses: int, checks: int) -> str:
    """One string for all the jobs of a pass that miss alike: after an outage that is every job, and a
    pass over 100,000 of them would otherwise hold 100,000 equal sentences."""
    return f"missing from Slurm ({detail}); check {misses} of {checks}, waiting to confirm"


def decide_untracked(ucloud_id: str, created_at: int, believed: JobState, grace_ms: int, now: int) -> Decision:
    """A job Core believes active but the provider never tracked: it can never finish; fail it.

    A job younger than ``grace_ms`` may be a create still in flight, so it only gets a recheck.
    """
    if believed.is_final:
        return Decision(ucloud_id, "unknown here but already final in Core")
    if now - created_at < grace_ms:
        return Decision(ucloud_id, "unknown here but only just created; checking again after the grace period", recheck=True)
    return Decision(
        ucloud_id,
        "the provider has no record of this job",
        update=_no_longer_available(now),
    )


@functools.lru_cache(maxsize=256)
def _update(state: JobState, status: str, core_state: JobState, now: int) -> JobUpdate:
    """A state change for Core. A non-final change names the state it expects to replace, so a stale
    update can never overwrite a newer one; a final state needs no guard (Core never leaves one).

    Updates are immutable and a pass decides all its jobs at one ``now``: the 5,000 jobs of a pass
    that finished alike share one update (and the store encodes it once)."""
    expected = None if state.is_final else core_state
    return JobUpdate(state=state, status=status, expected_state=expected, timestamp=now)


@functools.lru_cache(maxsize=16)
def _no_longer_available(now: int) -> JobUpdate:
    """The seed's update for a job Slurm no longer knows (or the provider never knew), one per ``now``."""
    return JobUpdate(state=JobState.FAILURE, status=NO_LONGER_AVAILABLE, timestamp=now)
