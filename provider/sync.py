"""Reconciliation passes: one Slurm query set per pass, shared by verify, the monitor and confirmations.

Requests (a verify batch, the monitor's tick, a scheduled confirming check) are merged into the next
pass. A pass asks Slurm once (squeue for everything slurmctld holds, then one sacct for the ids that
squeue does not list as ours), decides every job with the pure rules in ``provider.reconcile``, and
stores the decisions and their updates for Core in one transaction. A verify of 1,000 jobs costs the
same Slurm calls as a verify of one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from provider.collector import collector_paused
from provider.config import Settings
from provider.reconcile import (
    DebounceRules,
    Decision,
    Observation,
    Seen,
    TrackedJob,
    decide_tracked,
    decide_untracked,
    observe_listed,
    observe_unlisted,
    split_by_listing,
)
from provider.slurm.backend import SlurmBackend
from provider.slurm.types import QueryResult, SlurmJob
from provider.states import StateTable
from provider.store import Store
from provider.ucloud.models import JobState

log = structlog.get_logger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Belief:
    """What Core told us about a job in a verify call; ``believed=None`` means "what we last told Core"."""

    believed: JobState | None = None
    created_at: int | None = None


# "What we last told Core", shared: a monitor pass over 100,000 jobs needs no 100,000 equal objects.
AS_LAST_TOLD = Belief()


@dataclass(frozen=True)
class PassReport:
    decisions: list[Decision] = field(default_factory=list)
    live_ok: bool | None = None  # None: Slurm was not asked (nothing active to look up)
    history_ok: bool | None = None
    queued: int = 0
    error: str = ""

    @property
    def slurm_failed(self) -> bool:
        return self.live_ok is False or self.history_ok is False


# A pass queueing more updates than this logs each one's reason at debug (see Synchronizer._log_pass).
VERBOSE_UPDATES = 20
# The changed jobs' ids named per state in the pass's summary event (its line stays short for journald).
CHANGED_IDS_LOGGED = 200


@dataclass
class PassTimings:
    """Settings of the pass machinery that are not reconciliation rules."""

    unknown_job_grace_ms: int = 60_000
    confirm_interval_s: float = 30.0


def synchronizer_from_settings(
    settings: Settings,
    store: Store,
    backend: SlurmBackend,
    *,
    clock: Callable[[], int] = now_ms,
    on_queued: Callable[[], None] = lambda: None,
) -> Synchronizer:
    """The one place ``[reconcile]`` and ``[slurm.states]`` become a Synchronizer (daemon and CLI alike)."""
    rec = settings.reconcile
    return Synchronizer(
        store,
        backend,
        StateTable(settings.slurm.states),
        DebounceRules(
            checks=rec.missing_checks,
            window_ms=int(rec.missing_window * 1000),
            min_age_ms=int(rec.missing_min_age * 1000),
        ),
        PassTimings(unknown_job_grace_ms=int(rec.unknown_job_grace * 1000), confirm_interval_s=rec.confirm_interval),
        clock=clock,
        on_queued=on_queued,
    )


class Synchronizer:
    """Merges reconciliation requests into passes and runs them one at a time.

    >>> sync = Synchronizer(store, backend, StateTable(), DebounceRules())
    >>> report = await sync.request({"54112": Belief(JobState.RUNNING, created_at=1633329776235)})
    """

    def __init__(
        self,
        store: Store,
        backend: SlurmBackend,
        table: StateTable,
        rules: DebounceRules,
        timings: PassTimings | None = None,
        *,
        clock: Callable[[], int] = now_ms,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.table = table
        self.rules = rules
        self.timings = timings or PassTimings()
        self._clock = clock
        self._on_queued = on_queued
        self._pending: dict[str, Belief] = {}
        self._include_active = False
        self._next: asyncio.Future[PassReport] | None = None
        self._wake = asyncio.Event()
        self._later: dict[str, Belief] = {}  # jobs waiting for a pass at the time of _later_handle
        self._later_handle: asyncio.TimerHandle | None = None
        self.passes = 0
        self.last_report: PassReport | None = None
        self._busy = False
        self._settled: dict[str, Settled] = {}  # see _unchanged
        self._settled_by: StateTable | None = None  # the table those decisions were made with
        self._settled_from: Mapping[str, SlurmJob] | None = None  # and squeue's answer they saw

    @property
    def idle(self) -> bool:
        """No pass is running and none is asked for (timers for later passes aside)."""
        return not self._busy and not self._pending and not self._include_active and self._next is None

    @property
    def waiting_later(self) -> frozenset[str]:
        """The jobs waiting for a later pass (re-checks, terminates); empty when no timer is set."""
        return frozenset(self._later) if self._later_handle is not None else frozenset()

    # -- requests -----------------------------------------------------------------------------------

    def request(self, beliefs: Mapping[str, Belief]) -> asyncio.Future[PassReport]:
        """Reconcile these jobs in the next pass; the future resolves with that pass's report."""
        for ucloud_id, belief in beliefs.items():
            if belief.believed is not None or ucloud_id not in self._pending:
                self._pending[ucloud_id] = belief
        return self._schedule()

    def request_active(self) -> asyncio.Future[PassReport]:
        """Reconcile every job the provider tracks as active (the monitor's tick)."""
        self._include_active = True
        return self._schedule()

    def _schedule(self) -> asyncio.Future[PassReport]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        self._wake.set()
        return self._next

    def request_later(self, beliefs: Mapping[str, Belief], delay: float) -> None:
        """Reconcile these jobs in a pass ``delay`` seconds from now.

        All later requests share one timer, which only ever moves earlier: passes that keep finding
        Slurm down (each asks for a re-check) can never multiply into a storm of queries.
        """
        loop = asyncio.get_running_loop()
        for ucloud_id, belief in beliefs.items():
            if belief.believed is not None or ucloud_id not in self._later:
                self._later[ucloud_id] = belief
        due = loop.time() + delay
        if self._later_handle is not None and self._later_handle.when() <= due:
            return
        if self._later_handle is not None:
            self._later_handle.cancel()
        self._later_handle = loop.call_at(due, self._fire_later)

    def _fire_later(self) -> None:
        beliefs, self._later, self._later_handle = self._later, {}, None
        self.request(beliefs)

    # -- the worker ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run passes until cancelled."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                pending, self._pending = self._pending, {}
                include_active, self._include_active = self._include_active, False
                future, self._next = self._next, None
                self._busy = True
                try:
                    report = await self.run_pass(pending, include_active)
                except Exception as exc:  # a bug or a broken store must not stop future passes
                    report = PassReport(error=f"{type(exc).__name__}: {exc}")
                    self._retry_later(pending, exc)
                finally:
                    self._busy = False
                self.last_report = report
                if future is not None and not future.done():
                    future.set_result(report)
        finally:
            if self._later_handle is not None:
                self._later_handle.cancel()
                self._later_handle = None

    def _retry_later(self, pending: Mapping[str, Belief], exc: Exception) -> None:
        """A pass failed (a full disk, a bug): what it was asked to decide was accepted (a verify already
        answered {}), so it is asked for again after ``confirm_interval`` instead of being dropped."""
        if isinstance(exc, sqlite3.Error):
            log.error("reconcile.pass_failed", error=str(exc), retrying=len(pending), retry_in=self.timings.confirm_interval_s)
        else:
            log.exception("reconcile.pass_crashed", retrying=len(pending), retry_in=self.timings.confirm_interval_s)
        if pending:
            self.request_later(pending, self.timings.confirm_interval_s)

    async def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the pass in flight and the requests already accepted (a
        verify answered with ``{}``) are decided and stored. True if nothing was left undone."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._busy or self._pending:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("reconcile.flush_timeout", pending=len(self._pending))
                return False
            await asyncio.sleep(0.05)
        return True

    async def run_pass(self, pending: Mapping[str, Belief], include_active: bool = False) -> PassReport:
        """Decide, store and queue: one whole pass."""
        started = time.monotonic()
        queued = 0

        async def keep(decisions: list[Decision]) -> None:
            nonlocal queued
            if decisions:
                queued += await asyncio.to_thread(self.store.apply, decisions, self._clock())

        report = await self.plan(pending, include_active, keep=keep)
        self.passes += 1
        if queued:
            self._on_queued()
        rechecks = {
            d.ucloud_id: pending.get(d.ucloud_id, AS_LAST_TOLD) if d.tracked is None else AS_LAST_TOLD
            for d in report.decisions
            if d.recheck
        }
        if rechecks:
            self.request_later(rechecks, self.timings.confirm_interval_s)
        self._log_pass(report, queued, len(rechecks), include_active, started)
        return PassReport(report.decisions, report.live_ok, report.history_ok, queued)

    @staticmethod
    def _log_pass(report: PassReport, queued: int, rechecks: int, include_active: bool, started: float) -> None:
        """One ``reconcile.pass`` event a pass at info, naming the jobs whose state changed for Core, so
        every update stays traceable by job id. Each update's reason is its own ``job.update_queued``
        event: at info while a pass has few (a job at a time, as usual), at debug when a pass has many
        (the first pass after an outage), where one JSON line per job would cost more than the pass."""
        logger = log.bind()  # bound once: each use of the module's lazy proxy binds anew (~3 us a call)
        debugging = logger.is_enabled_for(logging.DEBUG)  # else no per-job debug line is even built
        changes = [d for d in report.decisions if d.update is not None]
        verbose = len(changes) <= VERBOSE_UPDATES
        by_state: dict[str, list[str]] = {}
        for decision in changes:
            assert decision.update is not None
            state = decision.update.state.value if decision.update.state else "status"
            by_state.setdefault(state, []).append(decision.ucloud_id)
            if verbose or debugging:
                (logger.info if verbose else logger.debug)(
                    "job.update_queued",
                    ucloud_id=decision.ucloud_id,
                    slurm_id=decision.tracked.slurm_id if decision.tracked else None,
                    state=decision.update.state.value if decision.update.state else None,
                    reason=decision.reason,
                )
        for decision in report.decisions:
            if decision.unmapped_state is not None and decision.update is None:
                logger.warning("slurm.state_unmapped", ucloud_id=decision.ucloud_id, slurm_state=decision.unmapped_state)
            elif debugging and decision.update is None:
                logger.debug("job.checked", ucloud_id=decision.ucloud_id, reason=decision.reason)
        logger.info(
            "reconcile.pass",
            kind="monitor" if include_active else "requested",
            jobs=len(report.decisions),
            updates=queued,
            changed={state: len(ids) for state, ids in by_state.items()},
            # the jobs by id, up to a journald-friendly line; the rest are in job.update_queued (debug)
            changed_ids={state: ids[:CHANGED_IDS_LOGGED] for state, ids in by_state.items()},
            rechecks=rechecks,
            slurm_ok=not report.slurm_failed,
            ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def plan(
        self, pending: Mapping[str, Belief], include_active: bool = False, keep: Keep | None = None
    ) -> PassReport:
        """Decide what every requested job needs, asking Slurm once; ``keep`` stores the decisions.

        Without ``keep`` nothing is stored or sent (the CLI's dry run). With it, the decisions are handed
        over in up to two batches, each stored in one transaction with its updates: those that squeue
        answered (stored while sacct runs), then those that needed sacct. A job's row and its update are
        always in the same batch; a crash between the two batches leaves the second batch's jobs as they
        were, for the next pass to decide again.
        """
        # squeue runs while the job map is read (its own process, on another core). A pass with no
        # active job to look up asks Slurm nothing, so it starts only once one is known to exist.
        # squeue's answer may so be a moment older than the map: a job submitted in that moment is
        # not listed and counts one miss, which the debounce (and missing_min_age) never let become
        # a verdict; the next pass lists it.
        asking_live = None
        if include_active or pending:
            among = None if include_active else list(pending)
            if await asyncio.to_thread(self.store.has_active, among):
                asking_live = asyncio.ensure_future(self.backend.live_jobs())
        try:
            return await self._plan(pending, include_active, asking_live, keep or _keep_nothing)
        finally:
            if asking_live is not None and not asking_live.done():
                asking_live.cancel()  # only when the pass failed: a broken store, a cancelled daemon

    async def _plan(
        self,
        pending: Mapping[str, Belief],
        include_active: bool,
        asking_live: asyncio.Future[QueryResult] | None,
        keep: Keep,
    ) -> PassReport:
        tracked: dict[str, TrackedJob] = await asyncio.to_thread(self.store.get, pending.keys()) if pending else {}
        active = await asyncio.to_thread(self.store.active) if include_active else []
        now = self._clock()
        with collector_paused():
            decisions, to_observe = self._triage(pending, tracked, active, now)
        if not to_observe:
            if asking_live is not None:
                await asking_live  # every active job turned final since has_active: rare, and harmless
            await keep(decisions)
            return PassReport(decisions)

        live = await (asking_live or self.backend.live_jobs())
        settled: dict[str, Settled] = {}
        with collector_paused():
            unchanged, to_observe = self._unchanged(to_observe, live, pending, settled)
            listed, unlisted = split_by_listing(to_observe, live)
        asking = (
            asyncio.ensure_future(self.backend.finished_jobs([job.slurm_id for job in unlisted])) if unlisted else None
        )
        # While sacct runs (a subprocess: the loop is free), decide the jobs squeue answered for, a
        # thousand at a time so that sacct's output is read as it comes; sacct is started first.
        chunk = 1000 if asking is not None else max(1, len(listed))
        if asking is not None:
            await asyncio.sleep(0)
        now = self._clock()
        for start in range(0, len(listed), chunk):
            with collector_paused():
                decisions.extend(self._decide_listed(listed[start : start + chunk], pending, now, settled))
            if asking is not None:
                await asyncio.sleep(0)
        if include_active:  # a monitor pass sees every active job: what it settled is all there is
            self._settled, self._settled_by, self._settled_from = settled, self.table, live.jobs
        # The unchanged decisions need nothing stored (that is what settled them): they only join the report.
        if asking is None:
            await keep(decisions)
            return PassReport(unchanged + decisions, live.ok)
        storing = asyncio.ensure_future(keep(decisions))  # in its thread, while sacct runs
        try:
            history = await asking
        except BaseException:
            storing.add_done_callback(_retrieve)  # a cancelled pass: the write finishes or rolls back alone
            raise
        now = self._clock()
        with collector_paused():
            rest = [
                self._decide(job, pending.get(job.ucloud_id, AS_LAST_TOLD), observe_unlisted(job, live, history), now)
                for job in unlisted
            ]
        await storing
        await keep(rest)
        return PassReport(unchanged + decisions + rest, live.ok, history.ok)

    def _triage(
        self, pending: Mapping[str, Belief], tracked: dict[str, TrackedJob], active: list[TrackedJob], now: int
    ) -> tuple[list[Decision], list[TrackedJob]]:
        """Decide what needs no Slurm query (jobs never tracked, jobs already final); return the rest,
        the requested jobs first, then the active ones not requested (all of them, in a monitor pass)."""
        decisions: list[Decision] = []
        to_observe: list[TrackedJob] = []
        for ucloud_id, belief in pending.items():
            job = tracked.get(ucloud_id)
            if job is None:
                if belief.believed is not None and belief.created_at is not None:
                    decisions.append(
                        decide_untracked(
                            ucloud_id, belief.created_at, belief.believed, self.timings.unknown_job_grace_ms, now
                        )
                    )
            elif job.state.is_final:
                decisions.append(self._decide(job, belief, Observation(Seen.UNKNOWN), now))
            else:
                to_observe.append(job)
        to_observe.extend(active if not pending else (job for job in active if job.ucloud_id not in pending))
        return decisions, to_observe

    def _unchanged(
        self, jobs: list[TrackedJob], live: QueryResult, pending: Mapping[str, Belief], settled: dict[str, Settled]
    ) -> tuple[list[Decision], list[TrackedJob]]:
        """The decisions of the jobs nothing happened to, and the jobs left to decide.

        A job that the previous monitor pass settled (no update, no change, no recheck), whose row and
        squeue job are the very objects it saw (the store keeps unchanged rows, the backend unchanged
        lines), and whose belief is still "as last told", gets that decision again without deciding:
        the rules are pure, and a decision that needs nothing holds no time. In a quiet pass that is
        every job, and the pass costs little more than squeue itself."""
        before = self._settled if self._settled_by is self.table and live.ok else {}
        if not before:
            return [], jobs
        # squeue answered exactly as last time (its index is the very same object): each job's squeue
        # job is then the one it settled with, without asking the index.
        same_answer = live.jobs is self._settled_from
        lookup = live.jobs.get
        again: list[Decision] = []
        others: list[TrackedJob] = []
        for job in jobs:
            seen = before.get(job.ucloud_id)
            if (
                seen is not None
                and seen[0] is job
                and (same_answer or lookup(job.slurm_id) is seen[1])
                and job.ucloud_id not in pending
            ):
                again.append(seen[2])
                settled[job.ucloud_id] = seen
            else:
                others.append(job)
        return again, others

    def _decide_listed(
        self,
        listed: list[tuple[TrackedJob, SlurmJob]],
        pending: Mapping[str, Belief],
        now: int,
        settled: dict[str, Settled],
    ) -> list[Decision]:
        """Decide jobs squeue answered for, noting in ``settled`` those that need nothing (see _unchanged)."""
        decisions = []
        for job, found in listed:
            belief = pending.get(job.ucloud_id, AS_LAST_TOLD)
            decision = self._decide(job, belief, observe_listed(found), now)
            if belief is AS_LAST_TOLD and decision.update is None and not decision.changed and not decision.recheck:
                settled[job.ucloud_id] = (job, found, decision)
            decisions.append(decision)
        return decisions

    def _decide(self, job: TrackedJob, belief: Belief, observation: Observation, now: int) -> Decision:
        return decide_tracked(job, belief.believed, observation, self.table, self.rules, now)


Keep = Callable[[list[Decision]], Awaitable[None]]  # stores a batch of a pass's decisions
Settled = tuple[TrackedJob, SlurmJob, Decision]  # a job, what squeue listed, and a decision that needs nothing


async def _keep_nothing(decisions: list[Decision]) -> None:
    """A dry run's store."""


def _retrieve(task: asyncio.Future[None]) -> None:
    """Collect a detached task's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


# -- the daemon's own schedule ---------------------------------------------------------------------


async def monitor_loop(sync: Synchronizer, interval: float, max_interval: float) -> None:
    """The monitor: current UCloud/Core never calls verify, so the provider notices every state change
    itself. Every ``interval`` seconds reconcile every active job; back off (up to ``max_interval``) while
    Slurm fails, so an outage does not become a storm of queries against a struggling slurmctld."""
    delay = interval
    while True:
        report = await sync.request_active()
        if report.slurm_failed or report.error:
            delay = min(max_interval, delay * 2)
            log.warning("monitor.backing_off", next_in=delay, error=report.error or "a Slurm query failed")
        else:
            delay = interval
        await asyncio.sleep(delay)
