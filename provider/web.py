"""The aiohttp application: middlewares (auth, error bodies, request ids), health, and lifetimes.

``make_app(settings)`` builds everything; each resource with a lifetime (the store, the HTTP session
to Core, the pass worker, the monitor, the outbox sender) is set up and torn down in one
``cleanup_ctx`` generator, so start-up and shutdown read as one story.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from provider.api import ApiError, add_routes, error_response
from provider.appkeys import (
    BACKEND,
    BACKEND_GIVEN,
    CLAIMS,
    CLOCK,
    CORE,
    METRICS,
    SENDER,
    SETTINGS,
    STORE,
    SYNC,
    TASKS,
    USAGE_METER,
    USAGE_SENDER,
    VERIFIER,
)
from provider.config import LiveSettings, Settings
from provider.edge import LIMITS, Refused, RequestLimits, check_username_header
from provider.jobs import SlurmUnavailable
from provider.lifetimes import LIFETIMES
from provider.metrics import Metrics, Snapshot, UsageSnapshot
from provider.slurm.backend import SlurmBackend
from provider.submission import RequestRefused
from provider.sync import now_ms
from provider.ucloud.auth import TokenVerifier, Unauthorized, load_public_key

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@web.middleware
async def errors_and_request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as UCloud's error body; every request gets an id in the logs.

    A caller's ``X-Request-Id`` is kept only if it is short and plain: it is echoed in a header and logged.
    A 500 means a bug in the provider; nothing a client sends may cause one (provider/edge.py).
    """
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex[:16]
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.why)
        except (RequestRefused, SlurmUnavailable) as exc:  # for the user: Core shows 4xx, never 5xx, texts
            response = error_response(400, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.reason)
        except ConnectionError as exc:  # the client went away mid-request: nobody to answer, nothing broken
            log.info("http.client_gone", path=request.path, error=repr(exc))
            response = error_response(400, "The connection closed before the request was complete")
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
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "(unmatched)"
        request.app[METRICS].requests.labels(request.method, name, str(response.status)).inc()
        response.headers["X-Request-Id"] = request_id
        return response


@web.middleware
async def request_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Headers a job can inherit are checked before any handler reads them (bodies: ``api.read_raw``)."""
    if request.path.startswith("/ucloud/"):
        try:
            check_username_header(request.headers, request.app[LIMITS])
        except Refused as exc:
            raise ApiError(400, f"Invalid request supplied: {exc}") from None
    return await handler(request)


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
        if provider_id is not None and provider_id != request.app[SETTINGS].current.provider.id:
            raise ApiError(404, f"This is not provider '{provider_id}'")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Says nothing about Slurm or Core (that is readiness)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the store takes a write, and the latest Slurm query and the latest call to Core worked.

    Read from what the daemon last saw, so a probe costs Slurm nothing. 503 names what is failing.
    """
    app = request.app
    checks: dict[str, str] = {}
    try:  # a real write (one row rewritten): a full disk or a read-only file is not ready
        await asyncio.to_thread(app[STORE].probe_write, now_ms())
        checks["store"] = "ok"
    except Exception as exc:  # any database error means not ready
        checks["store"] = f"failing: cannot write: {exc}"
    slurm_errors = {cmd: err for cmd, err in app[BACKEND].last_error.items() if err}
    checks["slurm"] = "ok" if not slurm_errors else "failing: " + "; ".join(f"{c}: {e}" for c, e in slurm_errors.items())
    core_error = app[SENDER].last_error
    checks["core"] = "ok" if not core_error else f"failing: {core_error}"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[METRICS].render)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def snapshot(app: web.Application) -> Snapshot | None:
    """The numbers /metrics reads at scrape time (runs in a worker thread: it asks the store)."""
    if STORE not in app or SENDER not in app or SYNC not in app or BACKEND not in app:
        return None
    stats = app[STORE].outbox_stats()
    backend = app[BACKEND]
    return Snapshot(
        slurm_calls=dict(backend.calls),
        slurm_failures=dict(backend.failures),
        jobs_by_state=app[STORE].count_by_state(),
        outbox_depth=stats.depth,
        outbox_oldest_age_seconds=max(0.0, (now_ms() - stats.oldest_created_at) / 1000) if stats.oldest_created_at else 0.0,
        updates_sent=app[SENDER].sent,
        updates_rejected=app[SENDER].dropped,
        update_failures=app[SENDER].failures,
        token_refreshes=app[CORE].refreshes,
        passes=app[SYNC].passes,
        usage=usage_snapshot(app),
    )


def usage_snapshot(app: web.Application) -> UsageSnapshot | None:
    if USAGE_METER not in app or USAGE_SENDER not in app:
        return None
    stats = app[STORE].usage_stats()
    meter, sender = app[USAGE_METER], app[USAGE_SENDER]
    return UsageSnapshot(
        reported_by_category=stats.reported_by_category,
        pending=stats.pending,
        pending_oldest_age_seconds=max(0.0, (now_ms() - stats.oldest_queued_at) / 1000) if stats.oldest_queued_at else 0.0,
        open_jobs=stats.open_jobs,
        exhausted_owners=stats.exhausted,
        reports_sent=sender.sent,
        reports_refused=sender.refused,
        exhausted_answers=sender.exhausted_answers,
        request_failures=sender.failures,
        passes=meter.passes,
        pass_failures=meter.failures,
    )


# -- the application ------------------------------------------------------------------------------


def make_app(
    settings: Settings,
    *,
    backend: SlurmBackend | None = None,
    clock: Callable[[], int] = now_ms,
) -> web.Application:
    """Build the daemon. ``backend`` replaces the configured Slurm backend (tests count its calls).

    Each resource with a lifetime is one generator in ``provider.lifetimes``, in start-up order;
    shutdown runs them backwards.
    """
    app = web.Application(
        middlewares=[errors_and_request_ids, ucloud_auth, request_limits],
        client_max_size=settings.server.max_body_bytes,
    )
    app[SETTINGS] = LiveSettings(settings)
    app[CLOCK] = clock
    app[BACKEND_GIVEN] = backend
    app[LIMITS] = RequestLimits.from_settings(settings.server)
    app[VERIFIER] = TokenVerifier(load_public_key(settings.ucloud.public_key_file))
    app[METRICS] = Metrics()
    app[TASKS] = []
    app[METRICS].read_from(lambda: snapshot(app))
    app.cleanup_ctx.extend(LIFETIMES)
    add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    log.info("app.configured", provider_id=settings.provider.id)
    return app
