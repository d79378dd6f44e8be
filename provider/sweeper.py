"""The sweeper: settles submit intents, so no create can leave a Slurm job that nobody tracks.

A create stores an intent (the UCloud id, which is also the Slurm job's name) before it runs sbatch.
If the create then fails in any way (sbatch timing out against a frozen slurmctld that takes the job
when it thaws, a full disk at commit, the daemon killed between sbatch and commit), the intent stays.
The sweeper asks Slurm, with one squeue for all unsettled intents, which jobs carry those names, and
cancels every one that is ours but not tracked. An intent is settled (forgotten) once Slurm, answering,
has shown no such job in ``checks`` looks spanning ``window_ms``: a job that a frozen slurmctld still
holds in its socket backlog can appear a moment after it thawed, so one empty answer is not enough.
While Slurm or the disk fails, nothing is decided and the next sweep tries again.

What the sweeper may touch, all of it required:
- its name is an unsettled intent's UCloud id, its comment is the daemon's ("UCloud job"), and it runs
  as the user the intent was submitted as (the daemon's own user in service mode). A job merely named
  like a UCloud id, a job of another user, or a job without an intent here is never touched;
- it is not the Slurm job the map tracks for that UCloud id;
- the create of that id is not running right now (its sbatch may have answered, and its commit not yet);
- scancel is given the Slurm id *and* the name, so an id reused meanwhile (a wiped slurmctld starts
  again at 1) is left alone by Slurm itself.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from provider.reconcile import TrackedJob
from provider.slurm.control import SlurmCommandFailed, SlurmControl
from provider.slurm.parse import UNIT_SEPARATOR
from provider.slurm.process import CommandTimeout
from provider.slurm.types import FINISHED_BASE_STATES, parse_state
from provider.store import Intent, Store
from provider.submission import UCLOUD_COMMENT
from provider.sync import now_ms

log = structlog.get_logger(__name__)

# Names on one squeue command line; intents beyond this wait for the next sweep (oldest first).
NAMES_PER_SWEEP = 500
_FIELDS = ("JobID", "UserName", "Comment", "State", "Name")  # the name last: it may hold anything


@dataclass(frozen=True)
class NamedJob:
    """One job squeue listed under one of the intents' names."""

    slurm_id: str
    user: str
    comment: str
    state: str
    name: str

    @property
    def finished(self) -> bool:
        return parse_state(self.state).base in FINISHED_BASE_STATES


@dataclass(frozen=True)
class Absence:
    """Successful looks in a row that found nothing to cancel for an intent, since ``since`` (ms)."""

    checks: int
    since: int


@dataclass(frozen=True)
class SweepRules:
    checks: int = 3
    window_ms: int = 120_000


@dataclass(frozen=True)
class IntentDecision:
    ucloud_id: str
    reason: str
    cancel: tuple[str, ...] = ()
    settled: bool = False
    absence: Absence | None = None


# -- the rules (pure) ---------------------------------------------------------------------------------


def squeue_args(names: Iterable[str]) -> list[str]:
    """Every job slurmctld holds under these names, with the fields that prove a job is ours."""
    spec = ",".join(f"{name}:0{UNIT_SEPARATOR}" for name in _FIELDS[:-1]) + f",{_FIELDS[-1]}:0"
    return ["--noheader", "--all", "--states=all", f"--name={','.join(names)}", "--Format", spec]


def parse_named_jobs(text: str) -> list[NamedJob]:
    """squeue's lines -> jobs; a line without all fields is an error (the answer then means nothing)."""
    jobs: list[NamedJob] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(UNIT_SEPARATOR, len(_FIELDS) - 1)
        if len(parts) != len(_FIELDS) or not parts[0].strip():
            raise ValueError(f"unexpected squeue line: {line!r}")
        slurm_id, user, comment, state, name = (p.strip() for p in parts)
        jobs.append(NamedJob(slurm_id, user, comment, state, name))
    return jobs


def is_ours(job: NamedJob, intent: Intent, service_user: str) -> bool:
    """A job a create of ``intent`` made: its name, the daemon's comment, and the user it ran as."""
    return (
        job.name == intent.ucloud_id
        and job.comment == UCLOUD_COMMENT
        and job.user == (intent.unix_user or service_user)
    )


def decide_intent(
    intent: Intent,
    listed: Iterable[NamedJob],
    *,
    tracked: TrackedJob | None,
    in_flight: bool,
    absence: Absence | None,
    service_user: str,
    rules: SweepRules,
    now: int,
) -> IntentDecision:
    """What to do about one intent, given a successful squeue of its name (taken before ``in_flight``
    and ``tracked`` were read, so a create that finished in between is seen as finished)."""
    if in_flight:
        return IntentDecision(intent.ucloud_id, "its create is still running")
    keep = tracked.slurm_id if tracked is not None else None
    orphans = tuple(
        job.slurm_id for job in listed if is_ours(job, intent, service_user) and not job.finished and job.slurm_id != keep
    )
    if orphans:
        return IntentDecision(intent.ucloud_id, "Slurm holds a job of this create that nobody tracks", cancel=orphans)
    seen = Absence(1, now) if absence is None else Absence(absence.checks + 1, absence.since)
    settled = seen.checks >= rules.checks and now - seen.since >= rules.window_ms
    why = "tracked" if tracked is not None else "no job"
    return IntentDecision(
        intent.ucloud_id,
        f"{why}; nothing to cancel in {seen.checks} looks over {(now - seen.since) // 1000} s",
        settled=settled,
        absence=seen,
    )


# -- the loop (I/O) -----------------------------------------------------------------------------------


@dataclass
class SweepReport:
    intents: int = 0
    cancelled: list[str] = field(default_factory=list)  # Slurm ids scancel accepted
    settled: list[str] = field(default_factory=list)
    error: str = ""


class Sweeper:
    """Runs a sweep every ``interval`` seconds, and at once when a create asks (``wake``)."""

    def __init__(
        self,
        store: Store,
        control: SlurmControl,
        *,
        in_flight: Callable[[], frozenset[str]],
        rules: SweepRules,
        interval: float,
        clock: Callable[[], int] = now_ms,
        service_user: str | None = None,
    ) -> None:
        self._store = store
        self._control = control
        self._in_flight = in_flight
        self._rules = rules
        self._interval = interval
        self._clock = clock
        self._service_user = service_user or pwd.getpwuid(os.geteuid()).pw_name
        self._absence: dict[str, Absence] = {}  # in memory: a restart only restarts the confirming looks
        self._wake = asyncio.Event()
        self.sweeps = 0
        self.cancelled_total = 0
        self.last_report: SweepReport | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                self.last_report = await self.sweep()
            except Exception:  # the sweeper must outlive any bug; the next sweep tries again
                log.exception("sweeper.crashed")
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def sweep(self) -> SweepReport:
        """One look at every unsettled intent: cancel what is ours and untracked, forget what is settled."""
        self.sweeps += 1
        try:
            intents = (await asyncio.to_thread(self._store.intents))[:NAMES_PER_SWEEP]
        except sqlite3.Error as exc:
            log.error("sweeper.store_unreadable", error=str(exc))
            return SweepReport(error=str(exc))
        if not intents:
            self._absence.clear()
            return SweepReport()
        listed = await self._list([i.ucloud_id for i in intents])
        if isinstance(listed, str):
            log.warning("sweeper.slurm_unavailable", intents=len(intents), error=listed)
            return SweepReport(len(intents), error=listed)
        flying = self._in_flight()  # read after squeue answered: see decide_intent
        try:
            tracked = await asyncio.to_thread(self._store.get, [i.ucloud_id for i in intents])
        except sqlite3.Error as exc:
            log.error("sweeper.store_unreadable", error=str(exc))
            return SweepReport(len(intents), error=str(exc))
        now = self._clock()
        by_name: dict[str, list[NamedJob]] = {}
        for job in listed:
            by_name.setdefault(job.name, []).append(job)
        report = SweepReport(len(intents))
        settled: list[str] = []
        for intent in intents:
            decision = decide_intent(
                intent,
                by_name.get(intent.ucloud_id, []),
                tracked=tracked.get(intent.ucloud_id),
                in_flight=intent.ucloud_id in flying,
                absence=self._absence.get(intent.ucloud_id),
                service_user=self._service_user,
                rules=self._rules,
                now=now,
            )
            self._remember(decision)
            if decision.cancel:
                if await self._cancel(intent, decision.cancel):
                    report.cancelled.extend(decision.cancel)
            elif decision.settled:
                settled.append(intent.ucloud_id)
            else:
                log.debug("sweeper.intent_checked", ucloud_id=intent.ucloud_id, reason=decision.reason)
        if settled:
            try:
                await asyncio.to_thread(self._store.retire_intents, settled)
            except sqlite3.Error as exc:  # a full disk: they are settled again on a later sweep
                log.warning("sweeper.retire_failed", ucloud_ids=settled, error=str(exc))
                report.error = str(exc)
            else:
                report.settled = settled
                for ucloud_id in settled:
                    self._absence.pop(ucloud_id, None)
                log.info("sweeper.intents_settled", ucloud_ids=settled)
        return report

    def _remember(self, decision: IntentDecision) -> None:
        if decision.absence is None:
            self._absence.pop(decision.ucloud_id, None)
        else:
            self._absence[decision.ucloud_id] = decision.absence

    async def _list(self, names: list[str]) -> list[NamedJob] | str:
        """The jobs squeue lists under these names, or why its answer means nothing."""
        try:
            result = await self._control.tools.run("squeue", squeue_args(names))
        except (CommandTimeout, OSError) as exc:
            return str(exc)
        if not result.ok:
            return result.describe()
        try:
            return parse_named_jobs(result.stdout)
        except ValueError as exc:
            return str(exc)

    async def _cancel(self, intent: Intent, slurm_ids: tuple[str, ...]) -> bool:
        try:
            await self._control.cancel(list(slurm_ids), user=intent.unix_user, name=intent.ucloud_id)
        except (SlurmCommandFailed, CommandTimeout, OSError) as exc:
            log.warning("sweeper.cancel_failed", ucloud_id=intent.ucloud_id, slurm_ids=list(slurm_ids), error=str(exc))
            return False
        self.cancelled_total += len(slurm_ids)
        log.warning(
            "sweeper.orphan_cancelled",
            ucloud_id=intent.ucloud_id,
            slurm_ids=list(slurm_ids),
            user=intent.unix_user or self._service_user,
            age_s=(self._clock() - intent.last_at) // 1000,
        )
        return True

