"""The ``[[products]]`` as UCloud sees them: Core's ``ProductV2`` for registration, and each product's rate.

Registration (``POST /api/products/v2``) follows IM2's ``loadComputeProducts``: units Core/GPU/GB for
resources (a whole number, shown with the frequency, e.g. "Core-hours"), the currency for money (a
floating-point unit, kept by Core in millionths); the price is the product's size in its unit for a
resource, ``floor(price x 10^6)`` for money. Core stores a category's unit and frequency the first
time it sees the category and never changes them afterwards (its upsert updates only the product
type and sub-allocations), so ``differences_from_core`` says when Core keeps something else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from provider.accounting import Frequency, Rate, Unit, price_in_micro
from provider.config import ProductSection


def rate_of(product: ProductSection) -> Rate:
    unit = Unit(product.accounting_unit)
    price = price_in_micro(product.price) if unit is Unit.MONEY else 1
    return Rate(unit, Frequency(product.accounting_frequency), price)


def rates(products: Iterable[ProductSection]) -> dict[tuple[str, str], Rate]:
    """(product id, category) -> its rate."""
    return {(p.id, p.category): rate_of(p) for p in products}


def memory_in_gigs(product: ProductSection) -> int:
    """IM2 submits ``--mem <memoryInGigs x 1000>`` MB, so a product's GB are its MB / 1000."""
    return product.memory_mb // 1000


def accounting_unit(product: ProductSection) -> dict[str, Any]:
    """Go's ``AccountingUnit`` (every key, no omitempty)."""
    unit = Unit(product.accounting_unit)
    if unit is Unit.MONEY:
        return {"name": product.currency, "namePlural": product.currency, "floatingPoint": True, "displayFrequencySuffix": False}
    return {"name": unit.core_name, "namePlural": unit.core_name, "floatingPoint": False, "displayFrequencySuffix": True}


def product_price(product: ProductSection) -> int:
    unit = Unit(product.accounting_unit)
    return {
        Unit.MONEY: price_in_micro(product.price),
        Unit.CPU: product.cpus,
        Unit.GPU: product.gpus,
        Unit.MEMORY: memory_in_gigs(product),
    }[unit]


def describe(product: ProductSection) -> str:
    if product.description:
        return product.description
    parts = [f"{product.cpus} CPU"]
    if product.memory_mb:
        parts.append(f"{product.memory_mb} MB memory")
    if product.gpus:
        parts.append(f"{product.gpus} GPU")
    return ", ".join(parts) + " per node"


def _omit_empty(values: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Go's ``omitempty``: drop these keys when they hold their type's zero value."""
    return {k: v for k, v in values.items() if k not in keys or v not in (0, "", False, None)}


def product_v2(product: ProductSection, provider_id: str) -> dict[str, Any]:
    """One ``ProductV2`` exactly as Go's ``accounting.ProductV2`` serialises it."""
    category = _omit_empty(
        {
            "name": product.category,
            "provider": provider_id,
            "productType": "COMPUTE",
            "accountingUnit": accounting_unit(product),
            "accountingFrequency": Frequency(product.accounting_frequency).core_name,
            "freeToUse": product.free_to_use,
            "allowSubAllocations": True,
        },
        ("name", "provider", "productType", "accountingFrequency", "freeToUse", "allowSubAllocations"),
    )
    return _omit_empty(
        {
            "type": "compute",
            "category": category,
            "name": product.id,
            "description": describe(product),
            "productType": "COMPUTE",
            "price": product_price(product),
            "fraction": {"numerator": 1, "denominator": 1},
            "hiddenInGrantApplications": False,
            "usage": None,
            "cpu": product.cpus,
            "memoryInGigs": memory_in_gigs(product),
            "gpu": product.gpus,
            "balance": 0,
            "maxUsableBalance": 0,
            "pricePerUnit": 0,
        },
        ("cpu", "memoryInGigs", "gpu"),
    )


def differences_from_core(ours: Iterable[ProductSection], core: Iterable[dict[str, Any]], provider_id: str) -> list[str]:
    """What Core holds differently from the config, one sentence each (missing products included)."""
    held = {(p.get("name"), (p.get("category") or {}).get("name")): p for p in core}
    problems = []
    for product in ours:
        theirs = held.get((product.id, product.category))
        if theirs is None:
            problems.append(f"{product.id} ({product.category}): Core does not have it")
            continue
        wanted = product_v2(product, provider_id)
        category = theirs.get("category") or {}
        for key in ("accountingUnit", "accountingFrequency"):
            if category.get(key) != wanted["category"].get(key):
                problems.append(
                    f"{product.id} ({product.category}): Core keeps category {key} {category.get(key)!r}, the config"
                    f" says {wanted['category'].get(key)!r} (Core never changes a category's unit or frequency once"
                    " registered: use a new category name)"
                )
        if theirs.get("price") != wanted["price"]:
            problems.append(f"{product.id} ({product.category}): Core has price {theirs.get('price')}, the config {wanted['price']}")
    return problems
