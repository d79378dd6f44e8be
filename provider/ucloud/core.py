"""The client for UCloud/Core's side of the API: access tokens and ``/api/jobs/control/update``.

The provider authenticates with its refresh token at ``/auth/providers/refresh`` and gets a 10-minute
RS256 access token. Like Core's own Go client it refreshes when fewer than 3 minutes remain, under one
lock so concurrent calls share one refresh, and refreshes once more if Core answers 401.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import structlog

log = structlog.get_logger(__name__)

REFRESH_MARGIN_SECONDS = 180
# Core names the one job it refuses: "Not found or permission denied (54112)" or
# "Unknown job or permission denied (54112)".
_REJECTED_ID = re.compile(r"(?:not found|unknown job) or permission denied \(([^)]+)\)", re.IGNORECASE)


class CoreUnavailable(Exception):
    """Core could not be reached or answered with an error other than a per-job rejection."""


@dataclass(frozen=True)
class PushResult:
    """The outcome of one update request: all delivered, or the ids Core refused (404), or an error."""

    delivered: bool
    rejected_ids: frozenset[str] = field(default_factory=frozenset)
    rejected_unnamed: bool = False  # a 404 that did not say which id
    error: str = ""


class CoreClient:
    def __init__(
        self,
        base_url: str,
        refresh_token: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._refresh_token = refresh_token
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def access_token(self, *, force: bool = False) -> str:
        async with self._lock:
            if force or self._token is None or self._token_expires - time.time() < REFRESH_MARGIN_SECONDS:
                await self._refresh()
            assert self._token is not None
            return self._token

    async def _refresh(self) -> None:
        body = {"items": [{"refreshToken": self._refresh_token}]}
        try:
            async with self._session.post(
                f"{self._base}/auth/providers/refresh", json=body, timeout=self._timeout
            ) as resp:
                payload = await _json(resp)
                if resp.status != 200:
                    raise CoreUnavailable(f"token refresh answered {resp.status}: {_why(payload)}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CoreUnavailable(f"token refresh failed: {type(exc).__name__}: {exc}") from None
        try:
            token = payload["responses"][0]["accessToken"]
            # Core signed it; we only read when it runs out, to refresh in time.
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        except (KeyError, IndexError, TypeError, jwt.PyJWTError) as exc:
            raise CoreUnavailable(f"token refresh gave an unusable answer ({exc!r})") from None
        self._token, self._token_expires = token, float(exp)
        self.refreshes += 1
        log.info("core.token_refreshed", expires_in=int(self._token_expires - time.time()))

    async def push_updates(self, items: Sequence[dict[str, Any]]) -> PushResult:
        """``POST /api/jobs/control/update`` with ``{"items": items}``."""
        body = {"items": list(items)}
        for attempt in (1, 2):
            try:
                token = await self.access_token(force=attempt == 2)
                async with self._session.post(
                    f"{self._base}/api/jobs/control/update",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self._timeout,
                ) as resp:
                    payload = await _json(resp)
                    status = resp.status
            except CoreUnavailable as exc:
                return PushResult(False, error=str(exc))
            except (TimeoutError, aiohttp.ClientError) as exc:
                return PushResult(False, error=f"{type(exc).__name__}: {exc}")
            if status == 401 and attempt == 1:
                log.info("core.unauthorized_retry")
                continue
            if 200 <= status < 300:
                return PushResult(True)
            why = _why(payload)
            if status in (403, 404):
                match = _REJECTED_ID.search(why)
                if match:
                    return PushResult(False, rejected_ids=frozenset({match.group(1)}), error=why)
                return PushResult(False, rejected_unnamed=True, error=f"{status}: {why}")
            return PushResult(False, error=f"{status}: {why}")
        return PushResult(False, error="unauthorized after a token refresh")

    async def call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One authorised call to Core: ``(status, decoded body)``, with one token refresh on a 401.

        Raises ``CoreUnavailable`` when Core cannot be reached or no token can be had.
        """
        for attempt in (1, 2):
            token = await self.access_token(force=attempt == 2)
            try:
                async with self._session.request(
                    method,
                    f"{self._base}{path}",
                    json=body,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self._timeout,
                ) as resp:
                    payload = await _json(resp)
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise CoreUnavailable(f"{type(exc).__name__}: {exc}") from None
            if status == 401 and attempt == 1:
                log.info("core.unauthorized_retry")
                continue
            return status, payload
        return 401, {"why": "unauthorized after a token refresh"}

    async def report_usage(self, items: Sequence[dict[str, Any]]) -> UsageAnswer:
        """``POST /api/accounting/v2/reportUsage``: one bool per item (False: the allocation is used up)."""
        try:
            status, payload = await self.call("POST", "/api/accounting/v2/reportUsage", body={"items": list(items)})
        except CoreUnavailable as exc:
            return UsageAnswer(None, 0, str(exc))
        if 200 <= status < 300:
            answers = payload.get("responses") if isinstance(payload, dict) else None
            if (
                not isinstance(answers, list)
                or len(answers) != len(items)
                or not all(isinstance(a, bool) for a in answers)
            ):
                return UsageAnswer(None, 502, f"Core's answer does not have one boolean per report: {str(payload)[:200]}")
            return UsageAnswer(answers, status)
        return UsageAnswer(None, status, f"{status}: {_why(payload)}")

    async def create_products(self, products: Sequence[dict[str, Any]]) -> tuple[int, str]:
        """``POST /api/products/v2`` with ``{"items": products}``: (status, why)."""
        status, payload = await self.call("POST", "/api/products/v2", body={"items": list(products)})
        return status, "" if 200 <= status < 300 else _why(payload)

    async def browse_products(self, provider_id: str, *, per_page: int = 250) -> list[dict[str, Any]]:
        """Every product Core has for this provider (``GET /api/products/v2/browse``, page by page)."""
        products: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"itemsPerPage": str(per_page), "filterProvider": provider_id}
            if cursor:
                params["next"] = cursor
            status, payload = await self.call("GET", "/api/products/v2/browse", params=params)
            if status != 200 or not isinstance(payload, dict):
                raise CoreUnavailable(f"products browse answered {status}: {_why(payload)}")
            products.extend(payload.get("items") or [])
            cursor = payload.get("next")
            if not cursor:
                return products


@dataclass(frozen=True)
class UsageAnswer:
    """Core's answer to one reportUsage request: one bool per item, or the status and why it failed
    (status 0: Core was not reached)."""

    answers: list[bool] | None
    status: int
    error: str = ""


async def _json(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"why": text[:300]}


def _why(payload: Any) -> str:
    if isinstance(payload, dict):
        return str(payload.get("why", "")) or str(payload)[:300]
    return str(payload)[:300]
