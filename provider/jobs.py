"""The job service: create, terminate and extend, the calls through which UCloud users change jobs.

Each call answers Core quickly and leaves the job's later life to reconciliation: create records its
intent before sbatch runs and stores the job map and its first updates in one transaction once sbatch
has answered; terminate cancels and asks for a pass a moment later; the monitor reports the final state.

A create never leaves a Slurm job nobody tracks: whatever goes wrong after the intent is stored (sbatch
timing out against a frozen slurmctld, a full disk at commit, the daemon killed in between), the intent
stays, and ``provider.sweeper`` cancels the Slurm job named after it once Slurm answers.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog

from provider.accounting import Owner, UsageSubject
from provider.config import LiveSettings, Settings
from provider.jobfolder import base_environment, prepare_folder, remove_folder
from provider.reconcile import TrackedJob, slurm_job_if_ours
from provider.slurm.backend import SlurmBackend
from provider.slurm.control import SlurmCommandFailed, SlurmControl
from provider.slurm.process import CommandTimeout
from provider.slurm.types import QueryResult
from provider.store import Store, StoreError
from provider.submission import (
    RequestRefused,
    acting_username,
    explain_sbatch_error,
    find_product,
    format_time,
    plan_extension,
    plan_submission,
)
from provider.sync import AS_LAST_TOLD, Synchronizer, now_ms
from provider.ucloud.models import ExtendRequest, Job, JobUpdate

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Give Slurm a moment to act on scancel before the pass that reports the final state.
AFTER_CANCEL_DELAY = 2.0
# A new job usually starts within seconds: one early pass tells Core RUNNING without waiting for the monitor.
AFTER_SUBMIT_DELAY = 3.0
# After a create failed to record its job, one quick scancel (the sweeper retries it until it works).
UNDO_TIMEOUT = 5.0

STORE_FAILED = "The provider cannot record new jobs right now (its database cannot be written); please try again later"
STORE_UNUSABLE = "The provider's database is not usable right now; please try again later"


class SlurmUnavailable(Exception):
    """Slurm could not be asked, so the request cannot be carried out safely now."""


class JobService:
    def __init__(
        self,
        settings: LiveSettings,
        store: Store,
        backend: SlurmBackend,
        control: SlurmControl,
        sync: Synchronizer,
        *,
        on_queued: Callable[[], None] = lambda: None,
        on_unsettled: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._settings = settings
        self._store = store
        self._backend = backend
        self._control = control
        self._sync = sync
        self._on_queued = on_queued
        self._on_unsettled = on_unsettled  # a create left an intent unsettled: the sweeper should look
        self._clock = clock
        self._creating: dict[str, asyncio.Lock] = {}
        self._in_flight: Counter[str] = Counter()

    @property
    def settings(self) -> Settings:
        """The settings in force now (SIGHUP may have replaced products, applications and [jobs])."""
        return self._settings.current

    @property
    def in_flight(self) -> frozenset[str]:
        """UCloud ids whose create is running now: the sweeper must not judge their Slurm jobs yet."""
        return frozenset(self._in_flight)

    # -- create ------------------------------------------------------------------------------------

    async def create(self, jobs: Sequence[Job], username_header: str | None) -> list[str]:
        """Submit every job; answers their providerGeneratedIds. All or nothing: if one is refused, the
        ones already submitted by this call are cancelled again, since Core deletes them all."""
        created: list[tuple[Job, str]] = []
        try:
            for job in jobs:
                created.append((job, await self._create_one(job, username_header)))
        except BaseException:
            for job, _ in created:
                await self._undo(job.id)
            raise
        return [provider_id for _, provider_id in created]

    async def _create_one(self, job: Job, username_header: str | None) -> str:
        self._in_flight[job.id] += 1
        lock = self._creating.setdefault(job.id, asyncio.Lock())
        try:
            async with lock:
                try:
                    existing = (await asyncio.to_thread(self._store.get, [job.id])).get(job.id)
                except sqlite3.Error as exc:
                    log.error("store.read_failed", ucloud_id=job.id, error=str(exc))
                    raise RequestRefused(STORE_FAILED) from None
                if existing is not None:  # Core retried a create that had reached us: same answer
                    return self._provider_generated_id(existing.slurm_id, existing.submitted_at)
                return await self._submit(job, username_header)
        finally:
            self._in_flight[job.id] -= 1
            if not self._in_flight[job.id]:
                del self._in_flight[job.id]
                self._creating.pop(job.id, None)

    async def _submit(self, job: Job, username_header: str | None) -> str:
        s = self.settings
        username = acting_username(username_header, job)
        plan = plan_submission(
            job,
            products=s.products,
            applications=s.applications,
            jobs=s.jobs,
            provider_id=s.provider.id,
            username=username,
            files=s.files.paths,
        )
        if plan.ignored_parameters:  # Core's own, or not declared in [applications.parameters]
            log.info("job.parameters_ignored", ucloud_id=job.id, names=list(plan.ignored_parameters))
        def prepare() -> tuple[Path, Path, bool]:  # in a thread: the user lookup may ask LDAP
            return prepare_folder(plan, {**base_environment(plan.unix_user, s.jobs.path), **plan.environment})

        script, env_file, created = await asyncio.to_thread(prepare)
        try:
            args = [*plan.argv[1:], f"--export-file={env_file}"]  # argv[0] is sbatch: SlurmTools finds it
            return await self._submit_prepared(job, args, plan.unix_user, str(script), str(plan.folder))
        except BaseException:
            if created:
                await asyncio.to_thread(remove_folder, plan.folder)
            raise

    async def _submit_prepared(self, job: Job, args: Sequence[str], user: str | None, script: str, folder: str) -> str:
        s = self.settings
        try:  # before sbatch: from here on, a Slurm job named job.id is one the sweeper may settle
            await asyncio.to_thread(self._store.record_intent, job.id, user, self._clock())
        except sqlite3.Error as exc:
            log.error("job.intent_not_recorded", ucloud_id=job.id, error=str(exc))
            raise RequestRefused(STORE_FAILED) from None
        try:
            slurm_id = await self._control.submit(args, script, user=user, cwd=folder, timeout=s.jobs.submit_timeout)
        except SlurmCommandFailed as exc:
            self._on_unsettled()  # sbatch can fail after slurmctld took the job (its own message timeout)
            log.warning("job.submit_refused", ucloud_id=job.id, error=exc.result.describe())
            raise RequestRefused(explain_sbatch_error(exc.result.stderr or exc.result.stdout)) from None
        except CommandTimeout:
            # sbatch may have reached slurmctld without telling us: the sweeper cancels what it made.
            self._on_unsettled()
            log.error("job.submit_timeout", ucloud_id=job.id, timeout=s.jobs.submit_timeout)
            raise RequestRefused("The cluster's scheduler did not answer in time; please try again later") from None
        except OSError as exc:
            self._on_unsettled()
            log.error("job.submit_not_started", ucloud_id=job.id, error=str(exc))
            raise RequestRefused("The provider cannot run sbatch; the administrator must check [slurm] bin_dir") from None
        now = self._clock()
        update = JobUpdate(
            status=f"Your job has been submitted to the queue (Slurm ID: {slurm_id})",
            output_folder=self._output_folder(job) or None,
            timestamp=now,
        )
        try:
            await asyncio.to_thread(
                self._store.track,
                ucloud_id=job.id,
                slurm_id=slurm_id,
                cluster=s.slurm.cluster,
                expected_name=job.id,
                submitted_at=now,
                now=now,
                unix_user=user,
                updates=[update],
                charges=UsageSubject(
                    Owner.of_job(job.owner.created_by, job.owner.project),
                    job.specification.product.category,
                    job.specification.product.id,
                ),
            )
        except (StoreError, sqlite3.Error) as exc:
            log.error("job.track_failed", ucloud_id=job.id, slurm_id=slurm_id, error=str(exc))
            await self._cancel_untracked(job.id, slurm_id, user)
            self._on_unsettled()
            raise RequestRefused(STORE_FAILED if isinstance(exc, sqlite3.Error) else str(exc)) from None
        self._on_queued()
        self._sync.request_later({job.id: AS_LAST_TOLD}, AFTER_SUBMIT_DELAY)
        log.info("job.submitted", ucloud_id=job.id, slurm_id=slurm_id, user=user or "(service)")
        return self._provider_generated_id(slurm_id, now)

    async def _cancel_untracked(self, ucloud_id: str, slurm_id: str, user: str | None) -> None:
        """A first try at cancelling a job sbatch made but the store did not take; the intent stays, so the
        sweeper tries again (and confirms) if this one fails."""
        try:
            await self._control.cancel([slurm_id], user=user, name=ucloud_id, timeout=UNDO_TIMEOUT)
            log.info("job.untracked_cancelled", ucloud_id=ucloud_id, slurm_id=slurm_id)
        except (SlurmCommandFailed, CommandTimeout, OSError) as exc:
            log.warning("job.untracked_cancel_failed", ucloud_id=ucloud_id, slurm_id=slurm_id, error=str(exc))

    def _provider_generated_id(self, slurm_id: str, submitted_at: int) -> str:
        """``<cluster>/<Slurm id>/<ms>`` (after UCloud's IM2): unique even after Slurm ids wrap."""
        return f"{self.settings.slurm.cluster or 'slurm'}/{slurm_id}/{submitted_at}"

    def _output_folder(self, job: Job) -> str:
        template = self.settings.jobs.output_folder
        return template.format(job_id=job.id, project=job.owner.project or "", username=job.owner.created_by) if template else ""

    async def _undo(self, ucloud_id: str) -> None:
        """Cancel a job of a create that is refused as a whole. Its intent comes back first, so if this
        scancel fails the sweeper still cancels the job once it is no longer tracked."""
        try:
            job = (await asyncio.to_thread(self._store.get, [ucloud_id])).get(ucloud_id)
        except sqlite3.Error as exc:
            log.error("job.undo_failed", ucloud_id=ucloud_id, error=str(exc))
            return
        if job is None:
            return
        try:
            await asyncio.to_thread(self._store.record_intent, ucloud_id, job.unix_user, self._clock())
        except sqlite3.Error as exc:
            log.error("job.intent_not_recorded", ucloud_id=ucloud_id, error=str(exc))
        self._on_unsettled()
        try:
            await self._control.cancel([job.slurm_id], user=job.unix_user, name=job.expected_name)
        except (SlurmCommandFailed, CommandTimeout, OSError) as exc:
            log.error("job.undo_failed", ucloud_id=ucloud_id, error=str(exc))
        try:
            await asyncio.to_thread(self._store.untrack, ucloud_id)
        except sqlite3.Error as exc:  # still tracked: the monitor reports it, and Core refuses it (404)
            log.error("job.undo_failed", ucloud_id=ucloud_id, error=str(exc))

    # -- terminate ---------------------------------------------------------------------------------

    async def terminate(self, jobs: Sequence[Job]) -> None:
        """Cancel the Slurm jobs that still carry these UCloud ids, with one scancel (per owner).

        Jobs that are unknown, already final or already gone from Slurm need nothing: that is a success.
        """
        tracked = await self._stored(self._store.get, [job.id for job in jobs])
        active = [t for t in tracked.values() if not t.state.is_final]
        if not active:
            return
        live = await self._backend.live_jobs()
        if not live.ok:
            raise SlurmUnavailable("The cluster's scheduler is not answering, so the job was not stopped; try again")
        by_user: dict[str | None, list[TrackedJob]] = {}
        for job in active:
            if still_ours(job, live):
                by_user.setdefault(job.unix_user, []).append(job)
            else:
                log.info("job.terminate_nothing_to_cancel", ucloud_id=job.ucloud_id, slurm_id=job.slurm_id)
        for user, group in by_user.items():
            try:
                await self._control.cancel([j.slurm_id for j in group], user=user)
            except (SlurmCommandFailed, CommandTimeout, OSError) as exc:
                raise SlurmUnavailable(f"Slurm did not cancel the job: {exc}") from None
            log.info("job.cancelled", ucloud_ids=[j.ucloud_id for j in group], slurm_ids=[j.slurm_id for j in group])
        self._sync.request_later(dict.fromkeys((job.ucloud_id for job in active), AS_LAST_TOLD), AFTER_CANCEL_DELAY)

    # -- extend ------------------------------------------------------------------------------------

    async def extend(self, items: Sequence[ExtendRequest]) -> None:
        """Raise each job's Slurm time limit to its new total, then tell Core the new allocation."""
        tracked = await self._stored(self._store.get, [item.job.id for item in items])
        plans: list[tuple[TrackedJob, int]] = []
        for item in items:
            job = tracked.get(item.job.id)
            if job is None or job.state.is_final:
                raise RequestRefused(f"Job {item.job.id} is not running on this provider")
            product = find_product(self.settings.products, item.job)
            plans.append((job, plan_extension(item.job, product, item.requested_time.total_seconds())))
        live = await self._backend.live_jobs()
        if not live.ok:
            raise SlurmUnavailable("The cluster's scheduler is not answering, so the job was not extended; try again")
        for job, total in plans:
            if not still_ours(job, live):
                raise RequestRefused(f"Job {job.ucloud_id} is no longer running in Slurm")
            try:
                await self._control.set_time_limit(job.slurm_id, format_time(total))
            except SlurmCommandFailed as exc:
                raise RequestRefused(f"Slurm refused the extension: {' '.join(exc.result.stderr.split())}") from None
            except (CommandTimeout, OSError):
                raise SlurmUnavailable("The cluster's scheduler did not answer in time; try again") from None
            now = self._clock()
            update = JobUpdate(
                new_time_allocation=total * 1000,
                status=f"Your job's time allocation was extended to {format_time(total)}",
                timestamp=now,
            )
            # Slurm has the new limit; if Core cannot be told, the user's retry asks for the same total.
            await self._stored(self._store.enqueue, job.ucloud_id, update, now)
            log.info("job.extended", ucloud_id=job.ucloud_id, slurm_id=job.slurm_id, seconds=total)
        self._on_queued()


    @staticmethod
    async def _stored(call: Callable[..., T], *args: object) -> T:
        """A store call for terminate and extend: a database error is a refusal the user can retry."""
        try:
            return await asyncio.to_thread(call, *args)
        except sqlite3.Error as exc:
            log.error("store.failed", error=str(exc))
            raise RequestRefused(STORE_UNUSABLE) from None


def still_ours(job: TrackedJob, live: QueryResult) -> bool:
    """Whether slurmctld still holds a job under this id that carries our name (ids wrap)."""
    return slurm_job_if_ours(job, live.jobs.get(job.slurm_id)) is not None
