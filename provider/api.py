"""UCloud's provider routes for jobs: what Core calls, with Core's paths, envelopes and error bodies."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from provider.appkeys import FOLLOW, JOBS, SETTINGS, STORE, SYNC
from provider.collector import collector_paused
from provider.edge import LIMITS, Refused, RequestLimits, parse_json_body
from provider.follow import follow
from provider.submission import dynamic_parameters
from provider.sync import Belief
from provider.ucloud.models import (
    BulkRequest,
    DynamicParametersRequest,
    ErrorBody,
    ExtendRequest,
    IntegrationInitRequest,
    Job,
    VerifiedJob,
)

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """An error for the caller, sent as UCloud's error body."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def error_response(status: int, why: str) -> web.Response:
    return web.json_response(ErrorBody(status_code=status, why=why).to_wire(), status=status)


async def read_bulk(request: web.Request, model: type[Any]) -> Any:
    """Parse ``{"items": [...]}`` from the raw body; Core's Go client sends no Content-Type."""
    return await read_model(request, BulkRequest[model], bulk=True)  # type: ignore[valid-type]


async def read_object(request: web.Request, model: type[Any]) -> Any:
    """Parse a body that is one JSON object, not a bulk envelope (requestDynamicParameters, init)."""
    return await read_model(request, model, bulk=False)


async def read_model(request: web.Request, model: type[Any], *, bulk: bool) -> Any:
    raw = await read_raw(request)
    with collector_paused():  # until the parsed tree is gone again: see read_raw
        return _validated(raw, request.app[LIMITS], model, bulk)


def _validated(raw: bytes, limits: RequestLimits, model: type[Any], bulk: bool) -> Any:
    data = parse_body(raw, limits)
    if not isinstance(data, dict) or (bulk and "items" not in data):
        expected = 'an object {"items": [...]}' if bulk else "a JSON object"
        raise ApiError(400, f"Invalid request supplied: expected {expected}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, f"Invalid request supplied: {describe_validation(exc)}") from None


async def read_raw(request: web.Request) -> bytes:
    """The body's bytes within the request limits (provider/edge.py), or a 4xx naming the limit. Bodies
    are read only here, after the token was checked, and only once.

    The callers parse and validate with the cyclic collector paused until the parsed tree is freed
    (the frame holding it has returned): were it paused for the parse alone, the first collection
    after it would walk every container of the tree (18 ms for a verify of 1,024 whole Jobs); freed
    before the pause ends, the tree never counts (the collector counts containers made minus freed)."""
    limits = request.app[LIMITS]
    too_large = f"Invalid request supplied: the body is larger than [server] max_body_bytes ({limits.max_body_bytes} bytes)"
    if (request.content_length or 0) > limits.max_body_bytes:  # refused unread (a gzip body is measured unpacked)
        raise ApiError(400, too_large)
    try:
        async with asyncio.timeout(limits.body_timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, f"The body did not arrive within [server] body_timeout ({limits.body_timeout:g} s)") from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(400, too_large) from None
    except web.RequestPayloadError as exc:  # a broken gzip or chunked encoding, a body cut short
        reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise ApiError(400, f"Invalid request supplied: the body could not be read ({reason})") from None


def parse_body(raw: bytes, limits: RequestLimits) -> Any:
    """The body as JSON (``None`` for an empty one), or a 400 naming the limit or rule it broke."""
    if not raw:
        return None
    try:
        return parse_json_body(raw, limits)
    except Refused as exc:
        raise ApiError(400, f"Invalid request supplied: {exc}") from None


def describe_validation(exc: ValidationError, limit: int = 3) -> str:
    errors = exc.errors(include_url=False, include_input=False)  # once: a bulk of bad items makes a long list
    parts = []
    for err in errors[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def verify_jobs(request: web.Request) -> web.Response:
    """``POST .../jobs/verify``: accept the batch, answer ``{}``; updates follow via the outbox."""
    bulk = await read_bulk(request, VerifiedJob)
    beliefs = {job.id: Belief(job.status.state, job.created_at) for job in bulk.items}
    request.app[SYNC].request(beliefs)
    log.info("verify.accepted", jobs=len(beliefs))
    return web.json_response({})


async def create_jobs(request: web.Request) -> web.Response:
    """``POST .../jobs``: submit with sbatch, answer the providerGeneratedIds.

    Refusals (``RequestRefused``, ``SlurmUnavailable``) become 400 with their message in the error
    middleware: Core shows users the ``why`` of 4xx answers, never of 5xx (IM2's comment in launch.go).
    """
    bulk = await read_bulk(request, Job)
    ids = await request.app[JOBS].create(bulk.items, request.headers.get("ucloud-username"))
    return web.json_response({"responses": [{"id": i} for i in ids]})


async def terminate_jobs(request: web.Request) -> web.Response:
    bulk = await read_bulk(request, Job)
    await request.app[JOBS].terminate(bulk.items)
    return web.json_response({"responses": [{} for _ in bulk.items]})


async def extend_jobs(request: web.Request) -> web.Response:
    bulk = await read_bulk(request, ExtendRequest)
    await request.app[JOBS].extend(bulk.items)
    return web.json_response({"responses": [{} for _ in bulk.items]})


async def acknowledge(request: web.Request) -> web.Response:
    """Calls older Cores may make that need only an acknowledgement (``updateAcl``)."""
    bulk = await read_bulk(request, dict)
    return web.json_response({"responses": [{} for _ in bulk.items]})


async def not_supported(request: web.Request) -> web.Response:
    raise ApiError(400, "This provider does not support this operation")


async def request_dynamic_parameters(request: web.Request) -> web.Response:
    """``POST .../jobs/requestDynamicParameters``: the parameters this provider adds to an application's form.

    Core asks on every opening of the job form, and on create for parameters the application lacks; a
    404 or 5xx there shows users an error or turns a create into 502 (``job.go``). None is the usual
    answer (``{"parameters": []}``, as IM2's Slurm); see ``dynamic_parameters`` for the rest.
    """
    body = await read_object(request, DynamicParametersRequest)
    app = body.application
    declared = {p.name for p in (app.invocation.parameters or [])} if app.invocation else set()
    settings = request.app[SETTINGS].current  # applications follow a reload (SIGHUP)
    params = dynamic_parameters(settings.applications, app.metadata.name, app.metadata.version, declared)
    return web.json_response({"parameters": params})


async def updated_labels(request: web.Request) -> web.Response:
    """``POST .../jobs/onUpdatedLabels``: labels change nothing in Slurm; Core needs only ``{}``."""
    await read_bulk(request, Job)
    return web.json_response({})


async def attach_or_detach(request: web.Request) -> web.Response:
    """``attachResource`` / ``detachResource``: a batch job's mounts are fixed when it is submitted."""
    raise ApiError(
        400,
        "This provider cannot add or remove folders or other resources while a job runs; "
        "start a new job with the resources it needs",
    )


async def integration_init(request: web.Request) -> web.Response:
    """``POST .../integration/init``: nothing to prepare for a user (no connection flow); ``{}``."""
    await read_object(request, IntegrationInitRequest)
    return web.json_response({})


async def retrieve_products(request: web.Request) -> web.Response:
    """``GET .../jobs/retrieveProducts``: one JobSupport per configured product (Core polls every 10 s)."""
    settings = request.app[SETTINGS].current  # products follow a reload (SIGHUP)
    return web.json_response(
        {
            "responses": [
                {
                    "product": {"id": p.id, "category": p.category, "provider": settings.provider.id},
                    "docker": {},
                    "virtualMachine": {},
                    "native": {
                        "enabled": True,
                        "web": False,
                        "vnc": False,
                        "logs": p.logs,
                        "terminal": False,
                        "peers": False,
                        "timeExtension": p.time_extension,
                    },
                    "queueStatus": None,
                }
                for p in settings.products
            ]
        }
    )


async def retrieve_manifest(request: web.Request) -> web.Response:
    """No connection flow: users count as connected (``enabled: false``)."""
    return web.json_response({"enabled": False, "expireAfterMs": None})


async def follow_job(request: web.Request) -> web.StreamResponse:
    """``GET /ucloud/jobs.provider.<id>/websocket``: a job's output, live (provider/follow.py)."""
    app = request.app
    return await follow(request, app[FOLLOW], app[STORE], app[SETTINGS].current.provider.id)


def add_routes(app: web.Application) -> None:
    base = "/ucloud/{provider_id}"
    # The follow stream: the provider id is part of the first segment (ucloud_auth checks it, 404 if not ours).
    app.router.add_get("/ucloud/jobs.provider.{provider_id}/websocket", follow_job)
    app.router.add_post(f"{base}/jobs", create_jobs)
    app.router.add_post(f"{base}/jobs/verify", verify_jobs)
    app.router.add_post(f"{base}/jobs/terminate", terminate_jobs)
    app.router.add_post(f"{base}/jobs/extend", extend_jobs)
    app.router.add_post(f"{base}/jobs/updateAcl", acknowledge)
    for operation in ("suspend", "unsuspend", "interactiveSession", "openTerminalInFolder"):
        app.router.add_post(f"{base}/jobs/{operation}", not_supported)
    app.router.add_post(f"{base}/jobs/requestDynamicParameters", request_dynamic_parameters)
    app.router.add_post(f"{base}/jobs/onUpdatedLabels", updated_labels)
    app.router.add_post(f"{base}/jobs/attachResource", attach_or_detach)
    app.router.add_post(f"{base}/jobs/detachResource", attach_or_detach)
    app.router.add_get(f"{base}/jobs/retrieveProducts", retrieve_products)
    app.router.add_get(f"{base}/integration/retrieveManifest", retrieve_manifest)
    app.router.add_post(f"{base}/integration/init", integration_init)
