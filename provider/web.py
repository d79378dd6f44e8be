"""The aiohttp application: middlewares (auth, error bodies, request ids), health, and lifetimes.

``make_app(settings)`` builds everything; each resource with a lifetime (the store, the HTTP session
to Core, the pass worker, the monitor, the outbox sender) is set up and torn down in one
``cleanup_ctx`` generator, so start-up and shutdown read as one story.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web

from provider.api import ApiError, add_routes, error_response
from provider.appkeys import BACKEND, CLAIMS, CORE, JOBS, SENDER, SETTINGS, STORE, SYNC, VERIFIER
from provider.config import Settings
from provider.jobs import JobService
from provider.monitor import OutboxSender, monitor_loop
from provider.reconcile import DebounceRules
from provider.slurm.backend import SlurmBackend
from provider.slurm.control import SlurmControl
from provider.slurm.select import select_backend
from provider.slurm.states import StateTable
from provider.store import Store
from provider.sync import PassTimings, Synchronizer, now_ms
from provider.ucloud.auth import TokenVerifier, Unauthorized, load_public_key
from provider.ucloud.core import CoreClient

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_and_request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as UCloud's error body; every request gets an id in the logs."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.why)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.reason)
        except Exception:
            log.exception("http.unhandled_error", path=request.path)
            response = error_response(500, "Internal error in the provider")
        log.info(
            "http.request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        response.headers["X-Request-Id"] = request_id
        return response


@web.middleware
async def ucloud_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Calls under ``/ucloud/`` must carry a token from UCloud/Core and name this provider."""
    if request.path.startswith("/ucloud/"):
        try:
            request[CLAIMS] = request.app[VERIFIER].verify_header(request.headers.get("Authorization"))
        except Unauthorized as exc:
            log.warning("auth.rejected", path=request.path, why=str(exc))
            raise ApiError(401, str(exc)) from None
        provider_id = request.match_info.get("provider_id")
        if provider_id is not None and provider_id != request.app[SETTINGS].provider.id:
            raise ApiError(404, f"This is not provider '{provider_id}'")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Says nothing about Slurm or Core (that is readiness)."""
    return web.json_response({"status": "ok"})


# -- lifetime --------------------------------------------------------------------------------------


def make_app(
    settings: Settings,
    *,
    backend: SlurmBackend | None = None,
    clock: Callable[[], int] = now_ms,
) -> web.Application:
    """Build the daemon. ``backend`` replaces the configured Slurm backend (tests count its calls)."""
    app = web.Application(middlewares=[errors_and_request_ids, ucloud_auth], client_max_size=64 * 1024 * 1024)
    app[SETTINGS] = settings
    app[VERIFIER] = TokenVerifier(load_public_key(settings.ucloud.public_key_file))
    app[BACKEND] = backend or select_backend(settings.slurm)
    refresh_token = read_refresh_token(settings)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = await asyncio.to_thread(Store, settings.store.path)
        log.info("store.opened", path=str(settings.store.path))
        yield
        await asyncio.to_thread(app[STORE].close)

    async def core_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[CORE] = CoreClient(settings.ucloud.url, refresh_token, session, timeout=settings.ucloud.timeout)
            sender = OutboxSender(
                app[STORE],
                app[CORE],
                batch=settings.reconcile.outbox_batch,
                max_backoff=settings.reconcile.outbox_max_backoff,
            )
            app[SENDER] = sender
            async with background(sender.run(), "outbox"):
                yield
            # Shutdown: one last attempt to hand Core what is queued; what is not sent stays stored.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sender.drain(), timeout=5)

    async def sync_ctx(app: web.Application) -> AsyncIterator[None]:
        rec = settings.reconcile
        sync = Synchronizer(
            app[STORE],
            app[BACKEND],
            StateTable(settings.slurm.states),
            DebounceRules(
                checks=rec.missing_checks,
                window_ms=int(rec.missing_window * 1000),
                min_age_ms=int(rec.missing_min_age * 1000),
            ),
            PassTimings(unknown_job_grace_ms=int(rec.unknown_job_grace * 1000), confirm_interval_s=rec.confirm_interval),
            clock=clock,
            on_queued=app[SENDER].wake,
        )
        app[SYNC] = sync
        app[JOBS] = JobService(
            settings,
            app[STORE],
            app[BACKEND],
            SlurmControl(slurm_conf=settings.slurm.conf or None, bin_dir=settings.slurm.bin_dir),
            sync,
            on_queued=app[SENDER].wake,
            clock=clock,
        )
        async with background(sync.run(), "reconcile"), background(
            monitor_loop(sync, rec.interval, rec.max_interval), "monitor"
        ):
            yield

    app.cleanup_ctx.extend([store_ctx, core_ctx, sync_ctx])
    add_routes(app)
    app.router.add_get("/healthz", healthz)
    log.info("app.configured", provider_id=settings.provider.id, backend=app[BACKEND].name)
    return app


@contextlib.asynccontextmanager
async def background(coro: Awaitable[None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a task for the duration of the block; cancel it on the way out."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def read_refresh_token(settings: Settings) -> str:
    path = settings.ucloud.refresh_token_file
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationProblem(f"[ucloud] refresh_token_file: {path}: cannot be read: {exc.strerror}") from None
    if not token:
        raise ConfigurationProblem(f"[ucloud] refresh_token_file: {path} is empty")
    return token


class ConfigurationProblem(Exception):
    """A file the configuration points at cannot be used; the message names the key and the file."""
