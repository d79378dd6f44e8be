"""The stand-in Core's accounting: ``/api/products/v2`` (create, browse, retrieve) and
``/api/accounting/v2/reportUsage``, checked as strictly as Go's types define them.

Bodies must carry exactly the keys Go's ``encoding/json`` writes for ``accounting.ProductV2`` and
``accounting.ReportUsageRequest`` (``omitempty`` keys may be left out), with Go's types (an int64 is
an integer, never a float or a bool). The semantics are Core's (``core2/pkg/accounting``):

- products: only the calling provider's; a category keeps the unit and frequency it was first
  registered with (Core's upsert updates only product type and sub-allocations); a product is replaced.
- reportUsage: items in order, and the first bad one fails the request (403) after the ones before it
  were applied, as Core's handler does. An absolute report with a ``scope`` sets that (owner, scope)'s
  usage and moves the wallet by the difference; without a scope it sets the wallet's local usage.
  The answer per item is false when the wallet is locked (usage at or above its quota).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import jwt
from aiohttp import web

PRODUCT_TYPES_C = ("storage", "compute", "ingress", "license", "inference", "network_ip", "private_network")
PRODUCT_TYPES = ("COMPUTE", "STORAGE", "INGRESS", "LICENSE", "INFERENCE", "NETWORK_IP", "PRIVATE_NETWORK")
FREQUENCIES = ("ONCE", "PERIODIC_MINUTE", "PERIODIC_HOUR", "PERIODIC_DAY")


class GoTypeError(ValueError):
    """A body Go's decoder (or Core's database constraints) would refuse: 400 "Invalid request supplied"."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _struct(obj: Any, where: str, fields: dict[str, str], omitempty: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``obj`` has exactly ``fields`` (name -> "str" | "bool" | "int" | "int?" | "str?" | "obj"),
    the ``omitempty`` ones optional."""
    if not isinstance(obj, dict):
        raise GoTypeError(f"{where} must be an object")
    missing = [k for k in fields if k not in obj and k not in omitempty]
    extra = [k for k in obj if k not in fields]
    if missing or extra:
        raise GoTypeError(f"{where}: missing keys {missing}, unexpected keys {extra}")
    for key, kind in fields.items():
        if key not in obj:
            continue
        value = obj[key]
        nullable = kind.endswith("?")
        base = kind.rstrip("?")
        if value is None and nullable:
            continue
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "int": _is_int(value),
            "obj": isinstance(value, dict),
        }[base]
        if not ok:
            raise GoTypeError(f"{where}.{key} must be {'null or ' if nullable else ''}{base}, not {value!r}")
    return obj


def check_product(product: Any, where: str = "items[]") -> dict[str, Any]:
    """One ``ProductV2`` as Go's type defines it."""
    _struct(
        product,
        where,
        {
            "type": "str",
            "category": "obj",
            "name": "str",
            "description": "str",
            "productType": "str",
            "price": "int",
            "fraction": "obj",
            "hiddenInGrantApplications": "bool",
            "usage": "int?",
            "cpu": "int",
            "cpuModel": "str",
            "memoryInGigs": "int",
            "memoryModel": "str",
            "gpu": "int",
            "gpuModel": "str",
            "balance": "int",
            "maxUsableBalance": "int",
            "pricePerUnit": "int",
        },
        omitempty=("cpu", "cpuModel", "memoryInGigs", "memoryModel", "gpu", "gpuModel"),
    )
    category = _struct(
        product["category"],
        f"{where}.category",
        {
            "name": "str",
            "provider": "str",
            "productType": "str",
            "accountingUnit": "obj",
            "accountingFrequency": "str",
            "freeToUse": "bool",
            "allowSubAllocations": "bool",
        },
        omitempty=("name", "provider", "productType", "accountingFrequency", "freeToUse", "allowSubAllocations"),
    )
    _struct(
        category["accountingUnit"],
        f"{where}.category.accountingUnit",
        {"name": "str", "namePlural": "str", "floatingPoint": "bool", "displayFrequencySuffix": "bool"},
    )
    _struct(product["fraction"], f"{where}.fraction", {"numerator": "int", "denominator": "int"})
    if product["type"] not in PRODUCT_TYPES_C:
        raise GoTypeError(f"{where}.type must be one of {PRODUCT_TYPES_C}")
    if product["productType"] not in PRODUCT_TYPES or category.get("productType") not in PRODUCT_TYPES:
        raise GoTypeError(f"{where}.productType and category.productType must be one of {PRODUCT_TYPES}")
    if category.get("accountingFrequency") not in FREQUENCIES:  # a database enum in Core
        raise GoTypeError(f"{where}.category.accountingFrequency must be one of {FREQUENCIES}")
    if not category.get("name") or not product["name"] or not category["accountingUnit"]["name"]:
        raise GoTypeError(f"{where}: the product, its category and its unit need names")
    if product["price"] < 0:
        raise GoTypeError(f"{where}.price must not be negative")
    return cast(dict[str, Any], product)


def check_report(item: Any, where: str = "items[]") -> dict[str, Any]:
    """One ``ReportUsageRequest`` as Go's type defines it."""
    _struct(
        item,
        where,
        {"isDeltaCharge": "bool", "owner": "obj", "categoryIdV2": "obj", "usage": "int", "description": "obj"},
    )
    owner = _struct(item["owner"], f"{where}.owner", {"type": "str", "username": "str", "projectId": "str"})
    if owner["type"] not in ("user", "project"):
        raise GoTypeError(f"{where}.owner.type must be user or project")
    _struct(item["categoryIdV2"], f"{where}.categoryIdV2", {"name": "str", "provider": "str"}, omitempty=("name", "provider"))
    _struct(item["description"], f"{where}.description", {"scope": "str?", "description": "str?"})
    return cast(dict[str, Any], item)


class Forbidden(Exception):
    """Core's 403 for one report: the request fails there (earlier items stay applied)."""


@dataclass
class Wallet:
    local_usage: int = 0
    quota: int | None = None  # None: unlimited (no allocation check in the stand-in)

    @property
    def locked(self) -> bool:
        return self.quota is not None and self.local_usage >= self.quota


@dataclass
class DevAccounting:
    """Products and wallets as Core keeps them, for the stand-in."""

    provider_id: str
    products: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (category, name) -> ProductV2
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> the category first registered
    wallets: dict[tuple[str, str], Wallet] = field(default_factory=dict)  # (owner reference, category) -> wallet
    scoped: dict[tuple[str, str], int] = field(default_factory=dict)  # (owner reference, scope) -> usage
    known_owners: set[str] | None = None  # None: every owner exists (usernames and project ids)
    reports: list[dict[str, Any]] = field(default_factory=list)  # every applied report, in order
    fail_with: int | None = None  # answer accounting calls with this status (Core down or broken)

    def usage(self, owner: str, category: str) -> int:
        wallet = self.wallets.get((owner, category))
        return wallet.local_usage if wallet else 0

    def set_quota(self, owner: str, category: str, quota: int | None) -> None:
        self.wallets.setdefault((owner, category), Wallet()).quota = quota

    # -- products ------------------------------------------------------------------------------------

    def create_products(self, caller: str, items: list[dict[str, Any]]) -> None:
        if not items:
            raise GoTypeError("no products supplied")
        for product in items:
            if product["category"].get("provider") != caller:
                raise Forbidden("forbidden")
        for product in items:
            name = product["category"]["name"]
            kept = self.categories.setdefault(name, dict(product["category"]))
            # Core's upsert: the unit and frequency of a known category never change.
            kept["productType"] = product["category"].get("productType")
            kept["allowSubAllocations"] = product["category"].get("allowSubAllocations", False)
            self.products[(name, product["name"])] = {**product, "category": dict(kept)}

    def browse(self, params: dict[str, str]) -> dict[str, Any]:
        try:
            per_page = int(params.get("itemsPerPage", "0") or 0)
        except ValueError:
            raise GoTypeError("itemsPerPage must be an integer") from None
        per_page = 50 if per_page <= 0 else min(per_page, 1000)  # Core's ItemsPerPage
        ordered = sorted(self.products.values(), key=lambda p: (p["category"]["provider"], p["category"]["name"], p["name"]))
        matching = [p for p in ordered if _filter_applies(p, params)]
        cursor = params.get("next")
        if cursor:
            matching = [p for p in matching if _cursor(p) > cursor]
        page = matching[:per_page]
        nxt = _cursor(page[-1]) if len(page) == per_page else None
        return {"items": page, "next": nxt, "itemsPerPage": per_page}

    # -- usage -------------------------------------------------------------------------------------

    def report(self, caller: str, items: list[dict[str, Any]]) -> list[bool]:
        answers: list[bool] = []
        for item in items:
            category = item["categoryIdV2"]
            if category.get("provider") != caller:
                raise Forbidden("You cannot report usage for this product")
            if category.get("name") not in self.categories:
                raise Forbidden("This category does not exist")
            owner = item["owner"]
            reference = owner["projectId"] or owner["username"]
            wrong_shape = (owner["type"] == "user") != (not owner["projectId"] and bool(owner["username"]))
            if not reference or wrong_shape or (self.known_owners is not None and reference not in self.known_owners):
                raise Forbidden("This user/project does not exist")
            if not item["isDeltaCharge"] and item["usage"] < 0:
                raise Forbidden("Absolute usage cannot be negative")
            if self.categories[category["name"]].get("freeToUse"):
                answers.append(True)
                continue
            wallet = self.wallets.setdefault((reference, category["name"]), Wallet())
            scope = item["description"]["scope"]
            current = self.scoped.get((reference, scope), 0) if scope is not None else wallet.local_usage
            delta = item["usage"] if item["isDeltaCharge"] else item["usage"] - current
            if scope is not None:
                self.scoped[(reference, scope)] = current + delta
            wallet.local_usage += delta
            self.reports.append(item)
            answers.append(not wallet.locked)
        return answers


def _filter_applies(product: dict[str, Any], params: dict[str, str]) -> bool:
    checks = {
        "filterName": product["name"],
        "filterProvider": product["category"]["provider"],
        "filterCategory": product["category"]["name"],
        "filterProductType": product["productType"],
    }
    return all(params.get(key) in (None, "", value) for key, value in checks.items())


def _cursor(product: dict[str, Any]) -> str:
    return f"{product['category']['provider']}@{product['category']['name']}@{product['name']}"


# -- HTTP ------------------------------------------------------------------------------------------------


def add_accounting_routes(app: web.Application, accounting: DevAccounting, public_key: Any) -> None:
    """Mount the accounting calls on the stand-in's application."""

    def caller_of(request: web.Request) -> str:
        """The provider id of a valid provider access token (Core: an invalid token is a guest -> 403)."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise _error(403, "Forbidden")
        try:
            claims = jwt.decode(
                header.removeprefix("Bearer "),
                public_key,
                algorithms=["RS256"],
                issuer="cloud.sdu.dk",
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise _error(401, "Unauthorized") from None
        except jwt.PyJWTError:
            raise _error(403, "Forbidden") from None
        sub = str(claims.get("sub", ""))
        if claims.get("role") != "PROVIDER" or not sub.startswith("#P_"):
            raise _error(403, "Forbidden")
        if accounting.fail_with is not None:
            raise _error(accounting.fail_with, "Injected failure")
        return sub.removeprefix("#P_")

    async def body_items(request: web.Request) -> list[Any]:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise _error(400, "Invalid request supplied") from None
        if not isinstance(body, dict) or set(body) != {"items"} or not isinstance(body["items"], list):
            raise _error(400, 'Invalid request supplied: expected exactly {"items": [...]}')
        return body["items"]

    async def create(request: web.Request) -> web.Response:
        caller = caller_of(request)
        items = await body_items(request)
        try:
            products = [check_product(p, f"items[{i}]") for i, p in enumerate(items)]
            accounting.create_products(caller, products)
        except GoTypeError as exc:
            raise _error(400, f"Invalid request supplied: {exc}") from None
        except Forbidden as exc:
            raise _error(403, str(exc)) from None
        return web.json_response({})

    async def browse(request: web.Request) -> web.Response:
        caller_of(request)
        try:
            return web.json_response(accounting.browse(dict(request.query)))
        except GoTypeError:
            raise _error(400, "Invalid request supplied") from None

    async def retrieve(request: web.Request) -> web.Response:
        caller_of(request)
        q = request.query
        if not (q.get("filterName") and q.get("filterCategory") and q.get("filterProvider")):
            raise _error(400, "name, category and provider must be supplied")
        found = accounting.browse({**q, "itemsPerPage": "1000"})["items"]
        if not found:
            raise _error(404, "unknown product")
        return web.json_response(found[0])

    async def report_usage(request: web.Request) -> web.Response:
        caller = caller_of(request)
        items = await body_items(request)
        try:
            reports = [check_report(item, f"items[{i}]") for i, item in enumerate(items)]
        except GoTypeError as exc:
            raise _error(400, f"Invalid request supplied: {exc}") from None
        try:
            answers = accounting.report(caller, reports)
        except Forbidden as exc:
            raise _error(403, str(exc)) from None
        return web.json_response({"responses": answers} if answers else {})

    async def dump(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "wallets": [
                    {"owner": o, "category": c, "usage": w.local_usage, "quota": w.quota, "locked": w.locked}
                    for (o, c), w in sorted(accounting.wallets.items())
                ],
                "reports": len(accounting.reports),
            }
        )

    app.router.add_post("/api/products/v2", _answering(create))
    app.router.add_get("/api/products/v2/browse", _answering(browse))
    app.router.add_get("/api/products/v2/retrieve", _answering(retrieve))
    app.router.add_post("/api/accounting/v2/reportUsage", _answering(report_usage))
    app.router.add_get("/dev/usage", dump)


class _Refusal(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status, self.why = status, why


def _error(status: int, why: str) -> _Refusal:
    return _Refusal(status, why)


def _answering(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Turn a refusal into Core's error body."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _Refusal as exc:
            body = {"statusCode": exc.status, "why": exc.why, "errorCode": "", "detailedCode": 0}
            return web.json_response(body, status=exc.status)

    return wrapped
