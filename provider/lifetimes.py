"""The daemon's resources, each with its lifetime: one ``cleanup_ctx`` generator per resource.

aiohttp runs these in order at start-up (each up to its ``yield``) and backwards at shutdown, so
start-up and shutdown of one resource read as one story: the Slurm backend, the store, the HTTP
session to Core with the outbox sender, the reconciliation (passes, monitor, sweeper, job service),
and usage accounting. Each reads the settings and what the earlier ones made from the application.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web

from provider.appkeys import (
    BACKEND,
    BACKEND_GIVEN,
    CLOCK,
    CORE,
    FOLLOW,
    JOBS,
    METRICS,
    SENDER,
    SETTINGS,
    STORE,
    SWEEPER,
    SYNC,
    TASKS,
    USAGE_METER,
    USAGE_SENDER,
)
from provider.config import read_refresh_token
from provider.follow import FollowHub
from provider.jobs import JobService
from provider.outbox import OutboxSender
from provider.slurm.commands import CommandBackend
from provider.slurm.control import SlurmControl
from provider.slurm.select import close_backend, open_backend
from provider.store import Store
from provider.sweeper import Sweeper, SweepRules
from provider.sync import monitor_loop, synchronizer_from_settings
from provider.ucloud.core import CoreClient
from provider.usage import UsageMeter, UsageSender, cancel_owner_jobs, usage_loop

log = structlog.get_logger(__name__)

Lifetime = Callable[[web.Application], AsyncIterator[None]]


async def slurm_backend(app: web.Application) -> AsyncIterator[None]:
    """How Slurm is queried (pyslurm or the commands), or the backend a test handed to ``make_app``."""
    given = app[BACKEND_GIVEN]
    app[BACKEND] = given or await open_backend(app[SETTINGS].current.slurm)
    app[BACKEND].observer = app[METRICS].observe_slurm
    yield
    if given is None:
        await close_backend(app[BACKEND])


async def store(app: web.Application) -> AsyncIterator[None]:
    path = app[SETTINGS].current.store.path
    app[STORE] = await asyncio.to_thread(Store, path)
    log.info("store.opened", path=str(path))
    yield
    await asyncio.to_thread(app[STORE].close)


async def core_and_outbox(app: web.Application) -> AsyncIterator[None]:
    """The session to Core and the sender that drains the outbox through it."""
    settings = app[SETTINGS].current
    refresh_token = read_refresh_token(settings.ucloud)
    async with aiohttp.ClientSession() as session:
        app[CORE] = CoreClient(settings.ucloud.url, refresh_token, session, timeout=settings.ucloud.timeout)
        sender = OutboxSender(
            app[STORE],
            app[CORE],
            batch=settings.reconcile.outbox_batch,
            max_backoff=settings.reconcile.outbox_max_backoff,
        )
        app[SENDER] = sender
        async with background(sender.run(), "outbox", app[TASKS]) as task:
            yield
            # Shutdown: the request in flight is answered first (see OutboxSender.stop) ...
            sender.stop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.ucloud.timeout + 1):
                    await asyncio.shield(task)
        # ... then one last attempt to hand Core what is queued; what is not sent stays stored.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await sender.drain()


async def reconciliation(app: web.Application) -> AsyncIterator[None]:
    """Passes (verify and monitor), the orphan sweeper, and the job service that feeds them."""
    settings = app[SETTINGS].current
    rec, clock = settings.reconcile, app[CLOCK]
    sync = synchronizer_from_settings(settings, app[STORE], app[BACKEND], clock=clock, on_queued=app[SENDER].wake)
    control = SlurmControl(slurm_conf=settings.slurm.conf or None, bin_dir=settings.slurm.bin_dir)
    sweeper = Sweeper(
        app[STORE],
        control,
        in_flight=lambda: app[JOBS].in_flight,
        rules=SweepRules(checks=rec.missing_checks, window_ms=int(rec.missing_window * 1000)),
        interval=rec.confirm_interval,
        clock=clock,
    )
    app[SYNC], app[SWEEPER] = sync, sweeper
    app[FOLLOW] = FollowHub(app[STORE], settings.jobs.directory)
    app[JOBS] = JobService(
        app[SETTINGS],
        app[STORE],
        app[BACKEND],
        control,
        sync,
        on_queued=app[SENDER].wake,
        on_unsettled=sweeper.wake,
        clock=clock,
    )
    async with background(sync.run(), "reconcile", app[TASKS]):
        async with (
            background(monitor_loop(sync, rec.interval, rec.max_interval), "monitor", app[TASKS]),
            background(sweeper.run(), "sweeper", app[TASKS]),
        ):
            yield
        app[FOLLOW].close()
        # Shutdown: decide what was already accepted (a verify answered {}), so its updates reach
        # the outbox before the sender's last drain.
        await sync.flush(timeout=10)


async def usage_accounting(app: web.Application) -> AsyncIterator[None]:
    """The accounting pass loop (sacct) and the sender of usage totals to Core."""
    live = app[SETTINGS]
    settings = live.current
    acc = settings.accounting
    if not acc.enabled:
        log.info("usage.disabled")
        yield
        return
    # Accounting always reads sacct's text (the command backend), whichever backend follows states.
    followed = app[BACKEND]
    if isinstance(followed, CommandBackend):
        sacct = followed
    else:
        sacct = CommandBackend(
            slurm_conf=settings.slurm.conf or None, timeout=settings.slurm.query_timeout, bin_dir=settings.slurm.bin_dir
        )
        sacct.observer = app[METRICS].observe_slurm
    policy = None
    if acc.on_exhausted == "cancel":
        control = SlurmControl(slurm_conf=settings.slurm.conf or None, bin_dir=settings.slurm.bin_dir)
        policy = cancel_owner_jobs(app[STORE], app[BACKEND], control)
    sender = UsageSender(
        app[STORE],
        app[CORE],
        settings.provider.id,
        batch=acc.batch,
        clock=app[CLOCK],
        on_exhausted=policy,
        max_backoff=settings.reconcile.outbox_max_backoff,
    )
    meter = UsageMeter(
        app[STORE],
        sacct,
        lambda: live.current.products,  # SIGHUP reloads products
        give_up_ms=int(acc.give_up_after * 1000),
        clock=app[CLOCK],
        on_queued=sender.wake,
    )
    app[USAGE_SENDER], app[USAGE_METER] = sender, meter
    async with background(sender.run(), "usage_sender", app[TASKS]):
        async with background(usage_loop(meter, acc.interval), "usage", app[TASKS]):
            yield
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await sender.drain()


# Start-up order; each may use what the earlier ones put in the application.
LIFETIMES: list[Lifetime] = [slurm_backend, store, core_and_outbox, reconciliation, usage_accounting]


@contextlib.asynccontextmanager
async def background(
    coro: Awaitable[None], name: str, registry: list[asyncio.Task[None]]
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a task for the duration of the block (listed in ``registry`` for the watchdog)."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    registry.append(task)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
