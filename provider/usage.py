"""Usage accounting at the edges: the accounting pass (one sacct), and the sender of totals to Core.

Every ``[accounting] interval`` seconds a pass asks sacct once for every job whose usage may still
grow, applies the pure rules of ``provider.accounting``, and stores the jobs' usage, the new absolute
totals per (owner, category) and the reports for Core in one SQLite transaction. The sender drains
those reports to ``/api/accounting/v2/reportUsage`` with the outbox's retry and back-off
(``RetryingDrainer``), and records what Core answered: ``false`` means the owner's allocation for the
category is used up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from provider.accounting import JobUsage, Owner, Unit, matching_record, next_usage, report_item, total_units, usage_scope
from provider.config import ProductSection
from provider.jobs import still_ours
from provider.outbox import RetryingDrainer
from provider.products import rates
from provider.slurm.backend import SlurmBackend
from provider.slurm.commands import CommandBackend
from provider.slurm.control import SlurmControl
from provider.store import PendingUsage, Store
from provider.ucloud.core import CoreClient

log = structlog.get_logger(__name__)

# A total Core refused (its category not registered yet, an owner it did not know) is offered again
# after this long, so registering the products later loses no usage.
REFUSED_RETRY_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class UsagePassReport:
    jobs: int = 0  # jobs whose usage may still grow, asked about in this pass
    changed: int = 0  # jobs whose usage (or state) changed
    queued: int = 0  # totals queued for Core
    error: str = ""  # why the pass changed nothing ("" = it ran)


def pricer(products: Sequence[ProductSection]) -> Callable[[str, list[tuple[str, int]]], int | None]:
    """``(category, [(product, resource-seconds)]) -> total units`` for the configured products.

    A job of a product no longer configured is priced by its category's unit and frequency (they are
    the category's, not the product's); for a currency its price is unknown, so it is left out (and
    the total is then held, never lowered). A category with no product left gives None: not reported.
    """
    by_product = rates(products)
    by_category = {category: rate for (_, category), rate in by_product.items()}

    def total_of(category: str, sums: list[tuple[str, int]]) -> int | None:
        fallback = by_category.get(category)
        if fallback is None:
            return None
        priced = []
        for product, resource_seconds in sums:
            rate = by_product.get((product, category))
            if rate is None and fallback.unit is not Unit.MONEY:
                rate = fallback
            if rate is not None:
                priced.append((resource_seconds, rate))
        return total_units(priced)

    return total_of


class UsageMeter:
    """Runs accounting passes: one sacct for all open jobs, pure rules, one transaction."""

    def __init__(
        self,
        store: Store,
        sacct: CommandBackend,
        products: Callable[[], Sequence[ProductSection]],
        *,
        give_up_ms: int,
        clock: Callable[[], int],
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._sacct = sacct
        self._products = products
        self._give_up_ms = give_up_ms
        self._clock = clock
        self._on_queued = on_queued
        self._lock = asyncio.Lock()
        self.passes = 0
        self.failures = 0
        self.last_error = ""

    async def run_pass(self) -> UsagePassReport:
        async with self._lock:  # the loop and a test (or shutdown) never run two passes at once
            report = await self._pass()
        self.passes += 1
        self.last_error = report.error
        if report.error:
            self.failures += 1
        return report

    async def _pass(self) -> UsagePassReport:
        now = self._clock()
        if await asyncio.to_thread(self._store.usage_requeue_refused, now - REFUSED_RETRY_MS, now):
            self._on_queued()
        open_jobs = await asyncio.to_thread(self._store.usage_open)
        if not open_jobs:
            return UsagePassReport()
        records = await self._sacct.usage_records([job.slurm_id for job, _ in open_jobs])
        if isinstance(records, str):
            log.warning("usage.pass_failed", jobs=len(open_jobs), error=records)
            return UsagePassReport(jobs=len(open_jobs), error=records)
        now = self._clock()
        products = list(self._products())
        units = {p.category: Unit(p.accounting_unit) for p in products}
        changed: list[JobUsage] = []
        for job, map_final in open_jobs:
            record = matching_record(job, records)
            new = next_usage(
                job, record, unit=units.get(job.category), map_final=map_final, now=now, give_up_ms=self._give_up_ms
            )
            if new == job:
                continue
            changed.append(new)
            if new.final and record is None:
                log.warning(
                    "usage.gave_up_waiting",
                    ucloud_id=job.ucloud_id,
                    slurm_id=job.slurm_id,
                    counted_seconds=job.elapsed_seconds,
                    why="the job finished but Slurm's accounting has no finished record of it",
                )
            elif new.final:
                log.info(
                    "usage.job_final",
                    ucloud_id=job.ucloud_id,
                    slurm_id=job.slurm_id,
                    elapsed_s=new.elapsed_seconds,
                    resource_seconds=new.resource_seconds,
                )
        if not changed:
            return UsagePassReport(jobs=len(open_jobs))
        changes = await asyncio.to_thread(self._store.usage_apply, changed, pricer(products), now)
        queued = 0
        for c in changes:
            if c.change.held:
                log.warning(
                    "usage.total_held",
                    owner=c.owner.reference,
                    category=c.category,
                    total=c.change.total,
                    computed=c.computed,
                    why="the computed total is lower than one already counted (a price lowered, a product removed)",
                )
            if c.change.changed:
                queued += 1
                log.info("usage.total_queued", owner=c.owner.reference, category=c.category, total=c.change.total)
        if queued:
            self._on_queued()
        return UsagePassReport(jobs=len(open_jobs), changed=len(changed), queued=queued)


async def usage_loop(meter: UsageMeter, interval: float) -> None:
    """An accounting pass every ``interval`` seconds (IM2: 30 s); a failed pass changes nothing."""
    while True:
        await meter.run_pass()
        await asyncio.sleep(interval)


ExhaustedHandler = Callable[[Owner, str], Awaitable[None]]


class UsageSender(RetryingDrainer):
    """Sends the waiting totals to Core, at most ``batch`` a request, and records Core's answers.

    A request Core refuses outright (400/403/404: an owner or category it does not know) is resent
    one report at a time to find the report it refuses, which is then recorded as refused and dropped;
    anything else is retried with back-off.
    """

    name = "usage"

    def __init__(
        self,
        store: Store,
        client: CoreClient,
        provider_id: str,
        *,
        batch: int = 500,
        clock: Callable[[], int],
        on_exhausted: ExhaustedHandler | None = None,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        super().__init__(min_backoff=min_backoff, max_backoff=max_backoff)
        self._store = store
        self._client = client
        self._provider_id = provider_id
        self._batch = batch
        self._clock = clock
        self._on_exhausted = on_exhausted
        self._singles = False
        self._epoch: str | None = None
        self._exhausted: set[tuple[Owner, str]] | None = None  # pairs whose last answer was false
        self._draining = asyncio.Lock()  # the loop and the shutdown drain never send the same total twice
        self.sent = 0
        self.refused = 0
        self.exhausted_answers = 0
        self.failures = 0
        self.last_error = ""

    async def drain(self) -> bool:
        async with self._draining:
            return await self._drain()

    async def _drain(self) -> bool:
        if self._epoch is None:
            self._epoch = await asyncio.to_thread(self._store.usage_epoch)
            rows = await asyncio.to_thread(self._store.usage_totals)
            self._exhausted = {(Owner(r["owner_type"], r["owner"]), r["category"]) for r in rows if r["core_answer"] == "false"}
        while True:
            pending = await asyncio.to_thread(self._store.usage_outbox_peek, 1 if self._singles else self._batch)
            if not pending:
                self._singles = False
                return True
            if not await self._send(pending):
                return False

    async def _send(self, pending: list[PendingUsage]) -> bool:
        assert self._epoch is not None
        items = [
            report_item(p.owner, p.category, self._provider_id, p.total, usage_scope(self._provider_id, p.category, self._epoch))
            for p in pending
        ]
        answer = await self._client.report_usage(items)
        now = self._clock()
        if answer.answers is not None:
            self.last_error = ""
            await asyncio.to_thread(
                self._store.usage_answered, [(p, "true" if a else "false") for p, a in zip(pending, answer.answers, strict=True)], now
            )
            self.sent += len(pending)
            log.info("usage.reported", reports=len(pending), exhausted=answer.answers.count(False))
            for report, usable in zip(pending, answer.answers, strict=True):
                await self._note_answer(report, usable)
            return True
        if answer.status in (400, 403, 404):
            self.last_error = ""
            if len(pending) == 1:
                report = pending[0]
                await asyncio.to_thread(self._store.usage_answered, [(report, f"refused: {answer.error}")], now)
                self.refused += 1
                log.error(
                    "usage.refused_by_core",
                    owner=report.owner.reference,
                    category=report.category,
                    total=report.total,
                    why=answer.error,
                )
            else:
                log.warning("usage.refused_unnamed", reports=len(pending), why=answer.error)
                self._singles = True
            return True
        self.failures += 1
        self.last_error = answer.error
        await asyncio.to_thread(self._store.usage_failed, pending, answer.error)
        log.warning("usage.send_failed", reports=len(pending), error=answer.error)
        return False

    async def _note_answer(self, report: PendingUsage, usable: bool) -> None:
        assert self._exhausted is not None
        key = (report.owner, report.category)
        if usable:
            if key in self._exhausted:
                self._exhausted.discard(key)
                log.info("usage.allocation_restored", owner=report.owner.reference, category=report.category)
            return
        self.exhausted_answers += 1
        if key not in self._exhausted:
            self._exhausted.add(key)
            log.warning(
                "usage.allocation_exhausted",
                owner=report.owner.reference,
                owner_type=report.owner.kind,
                category=report.category,
                total=report.total,
            )
        if self._on_exhausted is not None:
            try:
                await self._on_exhausted(report.owner, report.category)
            except Exception:  # a failing policy must not stop the reports
                log.exception("usage.exhausted_policy_failed", owner=report.owner.reference, category=report.category)


def cancel_owner_jobs(store: Store, backend: SlurmBackend, control: SlurmControl) -> ExhaustedHandler:
    """``[accounting] on_exhausted = "cancel"``: scancel the owner's running and queued jobs of that
    category (those that still carry their UCloud id in Slurm). The monitor then reports them final."""

    async def cancel(owner: Owner, category: str) -> None:
        jobs = await asyncio.to_thread(store.usage_active_jobs, owner, category)
        if not jobs:
            return
        live = await backend.live_jobs()
        if not live.ok:
            log.warning("usage.cancel_postponed", owner=owner.reference, category=category, error=live.error)
            return
        by_user: dict[str | None, list[str]] = {}
        for job in jobs:
            if still_ours(job, live):
                by_user.setdefault(job.unix_user, []).append(job.slurm_id)
        for user, slurm_ids in by_user.items():
            await control.cancel(slurm_ids, user=user)
            log.warning(
                "usage.jobs_cancelled", owner=owner.reference, category=category, slurm_ids=slurm_ids, why="allocation used up"
            )

    return cancel
