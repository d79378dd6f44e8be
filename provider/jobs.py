"""The job service: create, terminate and extend, the calls through which UCloud users change jobs.

Each call answers Core quickly and leaves the job's later life to reconciliation: create stores the
job map and its first updates in one transaction once sbatch has answered; terminate cancels and asks
for a pass a moment later; the monitor reports the final state.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from provider.config import Settings
from provider.reconcile import TrackedJob
from provider.slurm.backend import SlurmBackend
from provider.slurm.control import SlurmCommandFailed, SlurmControl
from provider.slurm.process import CommandTimeout
from provider.slurm.types import QueryResult
from provider.store import Store, StoreError
from provider.submission import (
    RequestRefused,
    Submission,
    acting_username,
    explain_sbatch_error,
    find_product,
    format_time,
    plan_submission,
)
from provider.sync import Belief, Synchronizer, now_ms
from provider.ucloud.models import ExtendRequest, Job, JobUpdate

log = structlog.get_logger(__name__)

# Give Slurm a moment to act on scancel before the pass that reports the final state.
AFTER_CANCEL_DELAY = 2.0
# A new job usually starts within seconds: one early pass tells Core RUNNING without waiting for the monitor.
AFTER_SUBMIT_DELAY = 3.0


class SlurmUnavailable(Exception):
    """Slurm could not be asked, so the request cannot be carried out safely now."""


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: SlurmBackend,
        control: SlurmControl,
        sync: Synchronizer,
        *,
        on_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self._store = store
        self._backend = backend
        self._control = control
        self._sync = sync
        self._on_queued = on_queued
        self._clock = clock
        self._creating: dict[str, asyncio.Lock] = {}

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
        lock = self._creating.setdefault(job.id, asyncio.Lock())
        async with lock:
            try:
                existing = (await asyncio.to_thread(self._store.get, [job.id])).get(job.id)
                if existing is not None:  # Core retried a create that had reached us: same answer
                    return self._provider_generated_id(existing.slurm_id, existing.submitted_at)
                return await self._submit(job, username_header)
            finally:
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
            sbatch=(s.slurm.bin_dir.rstrip("/") + "/sbatch") if s.slurm.bin_dir else "sbatch",
            files=s.files.paths,
        )
        if plan.ignored_parameters:  # Core's own, or not declared in [applications.parameters]
            log.info("job.parameters_ignored", ucloud_id=job.id, names=list(plan.ignored_parameters))
        script = await asyncio.to_thread(prepare_folder, plan)
        try:
            slurm_id = await self._control.submit(
                plan.argv, str(script), user=plan.unix_user, job_env=plan.environment, timeout=s.jobs.submit_timeout
            )
        except SlurmCommandFailed as exc:
            log.warning("job.submit_refused", ucloud_id=job.id, error=exc.result.describe())
            raise RequestRefused(explain_sbatch_error(exc.result.stderr or exc.result.stdout)) from None
        except CommandTimeout:
            # sbatch may have reached slurmctld without telling us; never leave a job Core will not know.
            asyncio.ensure_future(self._control.cancel_by_name(job.id, user=plan.unix_user))
            log.error("job.submit_timeout", ucloud_id=job.id, timeout=s.jobs.submit_timeout)
            raise RequestRefused("The cluster's scheduler did not answer in time; please try again later") from None
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
                unix_user=plan.unix_user,
                updates=[update],
            )
        except StoreError:
            await self._control.cancel([slurm_id], user=plan.unix_user)
            raise
        self._on_queued()
        self._sync.request_later({job.id: Belief()}, AFTER_SUBMIT_DELAY)
        log.info("job.submitted", ucloud_id=job.id, slurm_id=slurm_id, user=plan.unix_user or "(service)")
        return self._provider_generated_id(slurm_id, now)

    def _provider_generated_id(self, slurm_id: str, submitted_at: int) -> str:
        """``<cluster>/<Slurm id>/<ms>`` (after UCloud's IM2): unique even after Slurm ids wrap."""
        return f"{self.settings.slurm.cluster or 'slurm'}/{slurm_id}/{submitted_at}"

    def _output_folder(self, job: Job) -> str:
        template = self.settings.jobs.output_folder
        return template.format(job_id=job.id, project=job.owner.project or "", username=job.owner.created_by) if template else ""

    async def _undo(self, ucloud_id: str) -> None:
        job = (await asyncio.to_thread(self._store.get, [ucloud_id])).get(ucloud_id)
        if job is None:
            return
        try:
            await self._control.cancel([job.slurm_id], user=job.unix_user)
        except (SlurmCommandFailed, CommandTimeout) as exc:
            log.error("job.undo_failed", ucloud_id=ucloud_id, error=str(exc))
        await asyncio.to_thread(self._store.untrack, ucloud_id)

    # -- terminate ---------------------------------------------------------------------------------

    async def terminate(self, jobs: Sequence[Job]) -> None:
        """Cancel the Slurm jobs that still carry these UCloud ids, with one scancel (per owner).

        Jobs that are unknown, already final or already gone from Slurm need nothing: that is a success.
        """
        tracked = await asyncio.to_thread(self._store.get, [job.id for job in jobs])
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
            except (SlurmCommandFailed, CommandTimeout) as exc:
                raise SlurmUnavailable(f"Slurm did not cancel the job: {exc}") from None
            log.info("job.cancelled", ucloud_ids=[j.ucloud_id for j in group], slurm_ids=[j.slurm_id for j in group])
        self._sync.request_later({job.ucloud_id: Belief() for job in active}, AFTER_CANCEL_DELAY)

    # -- extend ------------------------------------------------------------------------------------

    async def extend(self, items: Sequence[ExtendRequest]) -> None:
        """Raise each job's Slurm time limit to its new total, then tell Core the new allocation."""
        tracked = await asyncio.to_thread(self._store.get, [item.job.id for item in items])
        plans: list[tuple[TrackedJob, int]] = []
        for item in items:
            job = tracked.get(item.job.id)
            if job is None or job.state.is_final:
                raise RequestRefused(f"Job {item.job.id} is not running on this provider")
            product = find_product(self.settings.products, item.job)
            if not product.time_extension:
                raise RequestRefused("Extension of jobs is not supported for this product")
            allocation = item.job.specification.time_allocation
            current = allocation.total_seconds() if allocation else product.max_time_minutes * 60
            added = item.requested_time.total_seconds()
            if added <= 0:
                raise RequestRefused("The requested extension must be longer than zero")
            total = current + added
            if total > product.max_time_minutes * 60:
                raise RequestRefused(
                    f"The new time allocation ({format_time(total)}) is longer than this product allows "
                    f"({format_time(product.max_time_minutes * 60)})"
                )
            plans.append((job, total))
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
            except CommandTimeout:
                raise SlurmUnavailable("The cluster's scheduler did not answer in time; try again") from None
            now = self._clock()
            update = JobUpdate(
                new_time_allocation=total * 1000,
                status=f"Your job's time allocation was extended to {format_time(total)}",
                timestamp=now,
            )
            await asyncio.to_thread(self._store.enqueue, job.ucloud_id, update, now)
            log.info("job.extended", ucloud_id=job.ucloud_id, slurm_id=job.slurm_id, seconds=total)
        self._on_queued()


def still_ours(job: TrackedJob, live: QueryResult) -> bool:
    """Whether slurmctld still holds a job under this id that carries our name (ids wrap)."""
    found = live.jobs.get(job.slurm_id)
    return found is not None and (job.expected_name is None or found.name == job.expected_name)


def prepare_folder(plan: Submission) -> Path:
    """Create the job's folder and copy the admin's script into it, owned by whoever runs the job."""
    plan.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    script = plan.folder / "job.sh"
    try:
        shutil.copyfile(plan.script, script)
    except OSError as exc:
        log.error("job.script_unreadable", script=str(plan.script), error=str(exc))
        raise RequestRefused("This application is misconfigured on the provider (its script cannot be read)") from None
    script.chmod(0o750)
    if plan.unix_user is not None:
        try:
            entry = pwd.getpwnam(plan.unix_user)
        except KeyError:
            raise RequestRefused(f"The cluster has no user {plan.unix_user!r} to run your job") from None
        for path in (plan.folder, script):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return script
