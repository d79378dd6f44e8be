"""A local stand-in for UCloud/Core (``ucloud-slurm-provider dev-core``), strict about the wire format.

It does what Core does for a provider, and no more: it owns the provider's RSA keypair and refresh
token (written to files exactly as UCloud hands them out at registration), answers
``/auth/providers/refresh`` with RS256 access tokens, accepts ``/api/jobs/control/update`` only from a
valid provider token with a well-formed body, applies updates with Core's rules (``expectedState``,
final states are final), and signs verify calls to the provider as Core signs them. Tests and the
README's demo use it; it keeps every update it received for inspection (``GET /dev/updates``).
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from provider.ucloud.devcore_accounting import DevAccounting, add_accounting_routes

log = structlog.get_logger(__name__)

ISSUER = "cloud.sdu.dk"
TOKEN_LIFETIME = 600
JOB_STATES = ("IN_QUEUE", "RUNNING", "SUCCESS", "FAILURE", "EXPIRED", "SUSPENDED")
FINAL = ("SUCCESS", "FAILURE", "EXPIRED")
# Go's JobUpdate, the type Core decodes every update into (provider-integration/shared/pkg/orchestrators/
# jobs.go:118-128): JSON key -> what Go's decoder accepts there. tests/test_core_conformance.py checks this
# table against the Go source (tests/data/core-go/types.json).
GO_JOB_UPDATE: dict[str, str] = {
    "state": "option-string",
    "outputFolder": "option-string",
    "status": "option-string",
    "expectedState": "option-string",
    "expectedDifferentState": "option-bool",
    "newTimeAllocation": "option-int",
    "allowRestart": "option-bool",
    "resourceList": "option-list",
    "timestamp": "timestamp",  # fnd.Timestamp: an integer; null and 1.5 fail Go's decoder
}
# The seed example's Kotlin-era key, which Go's decoder ignores: accepted only as null.
LEGACY_NULL_KEYS = frozenset({"newMounts"})


@dataclass
class DevCoreKeys:
    """The files UCloud hands a provider at registration, plus Core's private key."""

    private_key: rsa.RSAPrivateKey
    refresh_token: str
    directory: Path

    @property
    def public_key_file(self) -> Path:
        return self.directory / "ucloud_key.pub"

    @property
    def refresh_token_file(self) -> Path:
        return self.directory / "refresh_token"

    @classmethod
    def load_or_create(cls, directory: Path) -> DevCoreKeys:
        """Reuse the keypair and token in ``directory``, or write new ones (private files mode 600)."""
        directory.mkdir(parents=True, exist_ok=True)
        private_file = directory / "devcore_private_key.pem"
        token_file = directory / "refresh_token"
        if private_file.exists() and token_file.exists():
            key = serialization.load_pem_private_key(private_file.read_bytes(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            keys = cls(key, token_file.read_text().strip(), directory)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            keys = cls(key, secrets.token_hex(32), directory)
            _write_private(
                private_file,
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
            )
            _write_private(token_file, (keys.refresh_token + "\n").encode())
        der = keys.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        keys.public_key_file.write_text(base64.b64encode(der).decode() + "\n")
        return keys

    def service_token(self, *, lifetime: int = TOKEN_LIFETIME, now: int | None = None, **overrides: Any) -> str:
        """A token as Core signs its calls to the provider."""
        iat = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "principalType": "service",
            "role": "SERVICE",
            "sub": "_UCloud",
            "exp": iat + lifetime,
            "iat": iat,
            "aud": ["all:write"],
            "iss": ISSUER,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private_key, algorithm="RS256")

    def provider_token(self, provider_id: str, *, lifetime: int = TOKEN_LIFETIME) -> str:
        """An access token as Core issues it to a provider at ``/auth/providers/refresh``."""
        iat = int(time.time())
        claims = {
            "principalType": "provider",
            "role": "PROVIDER",
            "sub": f"#P_{provider_id}",
            "exp": iat + lifetime,
            "iat": iat,
            "aud": ["all:write"],
            "iss": ISSUER,
        }
        return jwt.encode(claims, self.private_key, algorithm="RS256")


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


class WireError(ValueError):
    """A body Core would refuse."""


@dataclass
class DevCore:
    """The state of the stand-in: known jobs and their states, every update received, injected faults."""

    keys: DevCoreKeys
    provider_id: str
    record_file: Path | None = None
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> state, as Core holds it
    requests: list[list[dict[str, Any]]] = field(default_factory=list)  # every accepted update request
    refreshes: int = 0
    accept_unknown_jobs: bool = True
    deleted_jobs: set[str] = field(default_factory=set)  # answered 404, as Core does for deleted jobs
    fail_with: int | None = None  # answer every update with this status (Core down or broken)
    revoked_before: int | None = None  # access tokens issued before this Unix time get 401
    access_lifetime: int = TOKEN_LIFETIME
    accounting: DevAccounting = field(init=False)  # products and wallets (provider/ucloud/devcore_accounting.py)

    def __post_init__(self) -> None:
        self.accounting = DevAccounting(self.provider_id)

    @property
    def updates(self) -> list[dict[str, Any]]:
        """Every accepted ``{"id", "update"}`` item, in arrival order."""
        return [item for request in self.requests for item in request]

    def updates_for(self, job_id: str) -> list[dict[str, Any]]:
        return [item["update"] for item in self.updates if item["id"] == job_id]

    def register(self, job_id: str, state: str = "IN_QUEUE") -> None:
        self.jobs[job_id] = state

    # -- HTTP ---------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/auth/providers/refresh", self._refresh)
        app.router.add_post("/api/jobs/control/update", self._update)
        app.router.add_get("/dev/updates", self._dump_updates)
        app.router.add_get("/dev/jobs", self._dump_jobs)
        add_accounting_routes(app, self.accounting, self.keys.private_key.public_key())
        return app

    async def _refresh(self, request: web.Request) -> web.Response:
        try:
            body = _json_object(await request.read())
            items = _items(body)
            tokens = []
            for item in items:
                _exact_keys(item, {"refreshToken"}, "items[]")
                if not isinstance(item["refreshToken"], str):
                    raise WireError("refreshToken must be a string")
                tokens.append(item["refreshToken"])
        except WireError as exc:
            return _error(400, f"Invalid request supplied: {exc}")
        if any(not secrets.compare_digest(t, self.keys.refresh_token) for t in tokens):
            return _error(401, "Unauthorized")
        self.refreshes += 1
        lifetime = self.access_lifetime
        return web.json_response(
            {
                "responses": [
                    {"accessToken": self.keys.provider_token(self.provider_id, lifetime=lifetime), "csrfToken": ""}
                    for _ in tokens
                ]
            }
        )

    async def _update(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return _error(403, "Forbidden")
        try:
            claims = jwt.decode(
                header.removeprefix("Bearer "),
                self.keys.private_key.public_key(),
                algorithms=["RS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            return _error(401, "Unauthorized")
        except jwt.PyJWTError:
            return _error(403, "Forbidden")
        if claims.get("sub") != f"#P_{self.provider_id}" or claims.get("role") != "PROVIDER":
            return _error(403, "Forbidden")
        if self.revoked_before is not None and claims["iat"] < self.revoked_before:
            return _error(401, "Unauthorized")
        if self.fail_with is not None:
            return _error(self.fail_with, "Injected failure")
        raw = await request.read()
        try:
            items = [check_update_item(item) for item in _items(_json_object(raw))]
        except WireError as exc:
            log.warning("devcore.rejected_body", why=str(exc))
            return _error(400, f"Invalid request supplied: {exc}")
        for item in items:
            job_id = item["id"]
            if job_id in self.deleted_jobs or (job_id not in self.jobs and not self.accept_unknown_jobs):
                return _error(404, f"Not found or permission denied ({job_id})")
        self.requests.append(items)
        for item in items:
            self._apply(item["id"], item["update"])
            log.info("devcore.update", id=item["id"], **{k: v for k, v in item["update"].items() if v is not None})
        if self.record_file is not None:
            with self.record_file.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"items": items}, separators=(",", ":")) + "\n")
        return web.json_response({})

    def _apply(self, job_id: str, update: dict[str, Any]) -> None:
        current = self.jobs.setdefault(job_id, "IN_QUEUE")
        new = update.get("state")
        if new is None:
            return
        if update.get("expectedState") is not None and update["expectedState"] != current:
            return
        if update.get("expectedDifferentState") and current == new:
            return
        if current in FINAL and new not in FINAL:
            return
        if current in FINAL:
            return
        self.jobs[job_id] = new

    async def _dump_updates(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests})

    async def _dump_jobs(self, request: web.Request) -> web.Response:
        return web.json_response(self.jobs)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("body must be a JSON object")
    return body


def _items(body: dict[str, Any]) -> list[Any]:
    _exact_keys(body, {"items"}, "body")
    if not isinstance(body["items"], list) or not body["items"]:
        raise WireError("items must be a non-empty list")
    return body["items"]


def _exact_keys(obj: Any, keys: Iterable[str], where: str, *, optional: Iterable[str] = ()) -> None:
    if not isinstance(obj, dict):
        raise WireError(f"{where} must be an object")
    required, allowed = set(keys), set(keys) | set(optional)
    missing, extra = required - obj.keys(), obj.keys() - allowed
    if missing or extra:
        raise WireError(f"{where}: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")


def check_update_item(item: Any) -> dict[str, Any]:
    """One ``{"id", "update"}`` checked against Go's ``ResourceUpdateAndId[JobUpdate]``, strictly: exact key
    names (Go would also take other spellings, and silently drop a misspelt key), Go's types, and the
    states Core knows."""
    _exact_keys(item, {"id", "update"}, "items[]")
    if not isinstance(item["id"], str) or not item["id"]:
        raise WireError("items[].id must be a non-empty string")
    update = item["update"]
    _exact_keys(update, {"timestamp"}, "items[].update", optional=set(GO_JOB_UPDATE) | LEGACY_NULL_KEYS)
    for key, value in update.items():
        where = f"items[].update.{key}"
        kind = GO_JOB_UPDATE.get(key, "null")
        if kind == "timestamp" and not _is_int(value):
            raise WireError(f"{where} must be an integer, not {json.dumps(value)}")
        if kind == "null" and value is not None:
            raise WireError(f"{where} is not a field of Go's JobUpdate; only null is tolerated")
        if value is None or kind in ("timestamp", "null"):
            continue
        wanted = {"option-string": str, "option-bool": bool, "option-list": list}.get(kind)
        if (kind == "option-int" and not _is_int(value)) or (wanted is not None and not isinstance(value, wanted)):
            raise WireError(f"{where} must be {kind.removeprefix('option-')} or null, not {json.dumps(value)}")
    for key in ("state", "expectedState"):
        value = update.get(key)
        if value is not None and value not in JOB_STATES:
            raise WireError(f"items[].update.{key} must be one of {JOB_STATES}, not {value!r}")
    return cast(dict[str, Any], item)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _error(status: int, why: str) -> web.Response:
    return web.json_response({"statusCode": status, "why": why, "errorCode": "", "detailedCode": 0}, status=status)


# -- calling the provider as Core does ------------------------------------------------------------------


_TEMPLATE = Path(__file__).with_name("core_go_job.json")
# Every key Go writes for an AppParameterValue (orchestrators/applications.go: no omitempty).
_VALUE_ZERO: dict[str, Any] = {
    "type": "", "path": "", "mountPath": "", "readOnly": False, "value": None, "hostname": "", "jobId": "",
    "id": "",
    "specification": {"applicationName": "", "language": "", "init": None, "job": None, "readme": None, "inputs": None},
    "modules": None, "port": 0, "tls": False, "server": "", "token": "", "tokenType": "",
}


@functools.cache
def _core_job_template() -> str:
    return json.dumps(json.loads(_TEMPLATE.read_text(encoding="utf-8"))["job"])


def go_value(value: dict[str, Any]) -> dict[str, Any]:
    """A parameter or resource value with every key Go's Core writes (``{"type": "text", "value": "x"}`` ->
    all fifteen keys)."""
    return {**copy.deepcopy(_VALUE_ZERO), **value}


def job_body(
    job_id: str,
    state: str = "RUNNING",
    *,
    created_at: int | None = None,
    provider: str = "example",
    application: tuple[str, str] = ("acme-batch", "1.0.0"),
    product: tuple[str, str] = ("example-compute-1", "example-compute"),
    parameters: dict[str, Any] | None = None,
    resources: list[dict[str, Any]] | None = None,
    time_allocation: tuple[int, int, int] | None = (1, 0, 0),
    replicas: int = 1,
    owner: str = "user",
    project: str | None = None,
    sample_rate: str | None = "0ms",
) -> dict[str, Any]:
    """A Job exactly as Go's Core sends it to a provider: every key of its Go structs, in Go's order.

    Built on ``core_go_job.json`` (Go Core's create body, rebuilt from the Go source by
    ``tests/conformance/generate.py``). Core adds ``ucMetricSampleRate`` to every job's parameters
    (``sample_rate``; None leaves it out, as Core does for one provider); ``owner=""`` leaves out
    ``createdBy`` as Go's ``omitempty`` does.
    """
    job: dict[str, Any] = json.loads(_core_job_template())
    spec, status, exported = job["specification"], job["status"], job["status"]["jobParametersJson"]["request"]
    user_parameters = {name: go_value(v) for name, v in (parameters or {}).items()}
    values = [go_value(v) for v in resources] if resources is not None else None
    duration = (
        {"hours": time_allocation[0], "minutes": time_allocation[1], "seconds": time_allocation[2]}
        if time_allocation is not None
        else None
    )
    product_ref = {"id": product[0], "category": product[1], "provider": provider}
    job["id"] = job_id
    job["createdAt"] = int(time.time() * 1000) - 3_600_000 if created_at is None else created_at
    job["owner"] = {"createdBy": owner, "project": project} if owner else {"project": project}
    spec["product"] = product_ref
    spec["application"] = {"name": application[0], "version": application[1]}
    spec["replicas"] = replicas
    spec["parameters"] = dict(sorted(user_parameters.items()))
    if sample_rate is not None and "ucMetricSampleRate" not in spec["parameters"]:
        spec["parameters"] = dict(
            sorted({**user_parameters, "ucMetricSampleRate": go_value({"type": "text", "value": sample_rate})}.items())
        )
    spec["resources"] = values
    spec["timeAllocation"] = duration  # an Option: null when absent (omitempty never drops a Go struct)
    status["state"] = state
    exported.update(
        application=spec["application"], product=product_ref, replicas=replicas, parameters=user_parameters,
        resources=values, timeAllocation=duration or {"hours": 0, "minutes": 0, "seconds": 0},
    )
    status["resolvedApplication"]["metadata"].update(name=application[0], version=application[1])
    status["resolvedProduct"]["name"] = product[0]
    status["resolvedProduct"]["category"].update(name=product[1], provider=provider)
    status["resolvedSupport"]["support"]["product"] = product_ref
    status["resolvedSupport"]["product"] = status["resolvedProduct"]
    return job


def go_json_bytes(value: Any) -> bytes:
    """JSON as Go's ``json.Marshal`` writes it: compact, UTF-8, with ``<``, ``>``, ``&``, U+2028 and U+2029
    escaped (they can only occur inside strings, so replacing them in the text is exact)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode("utf-8")


async def call_provider(
    session: aiohttp.ClientSession,
    provider_url: str,
    path: str,
    keys: DevCoreKeys,
    body: bytes | dict[str, Any] | None = None,
    *,
    username: str | None = None,
    method: str = "POST",
) -> tuple[int, Any]:
    """Call the provider exactly as Core's Go client does (``rpc/client.go`` and ``InvokeProvider`` in
    ``core2/pkg/orchestrator/orchestrator.go``): ``Authorization: Bearer`` with an RS256 token,
    ``Ucloud-Username`` (base64) only for calls made on a user's behalf, Go's ``User-Agent`` and
    ``Accept-Encoding: gzip``, no ``Content-Type`` and no ``Accept``; the body as Go's json.Marshal
    writes it."""
    headers = {
        "User-Agent": "Go-http-client/1.1",
        "Authorization": f"Bearer {keys.service_token()}",
        "Accept-Encoding": "gzip",
    }
    if username is not None:
        headers["Ucloud-Username"] = base64.b64encode(username.encode()).decode()
    data = body if isinstance(body, bytes) or body is None else go_json_bytes(body)
    async with session.request(
        method,
        f"{provider_url.rstrip('/')}{path}",
        data=data,
        headers=headers,
        skip_auto_headers=["Content-Type", "Accept", "Accept-Encoding", "User-Agent"],
    ) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def send_verify(
    session: aiohttp.ClientSession, provider_url: str, provider_id: str, keys: DevCoreKeys, body: bytes | dict[str, Any]
) -> tuple[int, Any]:
    """POST a verify to the provider, signed as Core signs."""
    return await call_provider(session, provider_url, f"/ucloud/{provider_id}/jobs/verify", keys, body)


async def follow_job(
    session: aiohttp.ClientSession, provider_url: str, provider_id: str, keys: DevCoreKeys, job: dict[str, Any],
    username: str = "user",
) -> AsyncIterator[dict[str, Any]]:
    """Follow a job's output as Core's ``jobsFollow`` does: dial the provider's websocket with the bearer
    token and a base64url username hint, send the ``init`` frame, yield every frame until the stream ends."""
    hint = base64.urlsafe_b64encode(username.encode()).decode()
    url = f"{provider_url.rstrip('/')}/ucloud/jobs.provider.{provider_id}/websocket?usernameHint={hint}"
    async with session.ws_connect(url, headers={"Authorization": f"Bearer {keys.service_token()}"}) as ws:
        init = {"call": f"jobs.provider.{provider_id}.follow", "streamId": "ignored",
                "payload": {"type": "init", "job": job}, "bearer": "", "project": None}
        await ws.send_str(json.dumps(init))
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            yield frame
            if frame.get("type") == "response":
                break
