"""Usage reports and product registration against the strict stand-in Core, over real HTTP (no Slurm).

The store is a real SQLite file; totals reach it through ``usage_apply`` as an accounting pass puts
them there; the sender speaks to the stand-in Core with provider tokens from ``/auth/providers/refresh``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import PROVIDER_ID, wait_for
from provider.accounting import JobUsage, Owner, UsageSubject, report_item, usage_scope
from provider.cli import main
from provider.config import ProductSection
from provider.products import product_v2
from provider.store import Store
from provider.ucloud.core import CoreClient
from provider.ucloud.devcore import DevCore, DevCoreKeys
from provider.usage import UsageSender, pricer

PRODUCTS = [ProductSection(id="cpu-1", category="cpu", cpus=1), ProductSection(id="cpu-4", category="cpu", cpus=4)]
DONNA = Owner("user", "donna#1234")
ERIK = Owner("user", "erik#0042")
PROJECT = Owner("project", "6c1a0b2e-0000-4000-8000-000000000001")


def now_ms() -> int:
    return int(time.time() * 1000)


def count(store: Store, owner: Owner, ucloud_id: str, seconds: int, product: str = "cpu-4") -> None:
    """Record a finished job of ``seconds`` on ``product`` as an accounting pass does."""
    now = now_ms()
    store.track(
        ucloud_id=ucloud_id, slurm_id=ucloud_id, cluster="", expected_name=ucloud_id, submitted_at=now, now=now,
        charges=UsageSubject(owner, "cpu", product),
    )
    cpus = 4 if product == "cpu-4" else 1
    usage = JobUsage(ucloud_id, ucloud_id, ucloud_id, owner, "cpu", product, seconds, seconds * cpus, final=True)
    store.usage_apply([usage], pricer(PRODUCTS), now)


@pytest.fixture
async def core(keys: DevCoreKeys, aiohttp_server: Any) -> tuple[DevCore, str]:
    dev = DevCore(keys, PROVIDER_ID)
    server = await aiohttp_server(dev.make_app(), host="127.0.0.1")
    return dev, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def client(core: tuple[DevCore, str], keys: DevCoreKeys) -> Any:
    async with aiohttp.ClientSession() as session:
        yield CoreClient(core[1], keys.refresh_token, session, timeout=5)


async def register(client: CoreClient, products: list[ProductSection] = PRODUCTS) -> None:
    status, why = await client.create_products([product_v2(p, PROVIDER_ID) for p in products])
    assert status == 200, why


def sender(store: Store, client: CoreClient, **kw: Any) -> UsageSender:
    return UsageSender(store, client, PROVIDER_ID, clock=now_ms, min_backoff=0.05, max_backoff=0.2, **kw)


async def test_totals_reach_core_as_absolute_scoped_reports_and_core_answers_are_recorded(
    tmp_path: Path, core: tuple[DevCore, str], client: CoreClient
) -> None:
    dev, _ = core
    await register(client)
    store = Store(tmp_path / "p.sqlite3")
    count(store, DONNA, "1", 1000)  # 4,000 core-seconds
    count(store, DONNA, "2", 50, "cpu-1")  # 50
    count(store, PROJECT, "3", 90)  # 360
    s = sender(store, client)
    assert await s.drain()
    assert dev.accounting.usage(DONNA.reference, "cpu") == 4050 // 60 == 67
    assert dev.accounting.usage(PROJECT.reference, "cpu") == 6
    assert all(not r["isDeltaCharge"] and r["description"]["scope"].endswith(store.usage_epoch()) for r in dev.accounting.reports)
    rows = {(r["owner"], r["category"]): r for r in store.usage_totals()}
    assert rows[(DONNA.reference, "cpu")]["reported_total"] == 67
    assert rows[(DONNA.reference, "cpu")]["core_answer"] == "true"
    assert store.usage_stats().pending == 0
    # A later total for the same owner replaces the earlier one: Core's wallet is the new total, not the sum.
    count(store, DONNA, "4", 15)  # +60 core-seconds: 4,110 / 60 = 68
    assert await s.drain()
    assert dev.accounting.usage(DONNA.reference, "cpu") == 68
    assert s.sent == 3


async def test_core_down_keeps_the_totals_until_it_answers(
    tmp_path: Path, core: tuple[DevCore, str], client: CoreClient
) -> None:
    dev, _ = core
    await register(client)
    store = Store(tmp_path / "p.sqlite3")
    count(store, ERIK, "1", 600)
    dev.accounting.fail_with = 503
    s = sender(store, client)
    assert not await s.drain()
    assert s.failures == 1 and "503" in s.last_error
    assert store.usage_stats().pending == 1 and dev.accounting.usage(ERIK.reference, "cpu") == 0
    count(store, ERIK, "2", 60)  # a newer total while Core is down replaces the waiting one
    assert store.usage_stats().pending == 1
    dev.accounting.fail_with = None
    task = asyncio.ensure_future(s.run())  # the retry loop, with back-off
    try:
        await wait_for(lambda: store.usage_stats().pending == 0, 10)
    finally:
        task.cancel()
    assert dev.accounting.usage(ERIK.reference, "cpu") == 44  # (600 + 60) x 4 / 60
    assert [r["usage"] for r in dev.accounting.reports] == [44]  # one report: the latest total


async def test_false_from_core_is_recorded_logged_and_handed_to_the_policy(
    tmp_path: Path, core: tuple[DevCore, str], client: CoreClient
) -> None:
    dev, _ = core
    await register(client)
    dev.accounting.set_quota(DONNA.reference, "cpu", 50)
    store = Store(tmp_path / "p.sqlite3")
    count(store, DONNA, "1", 1000)  # 66 core-minutes > quota 50
    count(store, ERIK, "2", 60)
    told: list[tuple[Owner, str]] = []

    async def policy(owner: Owner, category: str) -> None:
        told.append((owner, category))

    s = sender(store, client, on_exhausted=policy)
    assert await s.drain()
    answers = {r["owner"]: r["core_answer"] for r in store.usage_totals()}
    assert answers == {DONNA.reference: "false", ERIK.reference: "true"}
    assert told == [(DONNA, "cpu")] and s.exhausted_answers == 1
    assert store.usage_stats().exhausted == 1


async def test_a_report_core_refuses_is_found_recorded_and_the_others_still_go(
    tmp_path: Path, core: tuple[DevCore, str], client: CoreClient
) -> None:
    dev, _ = core
    await register(client)
    dev.accounting.known_owners = {DONNA.reference, PROJECT.reference}  # Core does not know erik
    store = Store(tmp_path / "p.sqlite3")
    count(store, DONNA, "1", 60)
    count(store, ERIK, "2", 60)
    count(store, PROJECT, "3", 60)
    s = sender(store, client)
    assert await s.drain()
    answers = {r["owner"]: r["core_answer"] for r in store.usage_totals()}
    assert answers[DONNA.reference] == "true" and answers[PROJECT.reference] == "true"
    assert answers[ERIK.reference].startswith("refused: 403: This user/project does not exist")
    assert s.refused == 1 and store.usage_stats().pending == 0


# -- the stand-in is as strict as Go's types -----------------------------------------------------------------


async def post(client: CoreClient, path: str, body: Any) -> tuple[int, Any]:
    return await client.call("POST", path, body=body)


def good_report() -> dict[str, Any]:
    return report_item(DONNA, "cpu", PROVIDER_ID, 5, usage_scope(PROVIDER_ID, "cpu", "e"))


@pytest.mark.parametrize(
    "spoil",
    [
        lambda r: r.update(usage=5.0),
        lambda r: r.update(usage=True),
        lambda r: r.update(isDeltaCharge="false"),
        lambda r: r.pop("description"),
        lambda r: r.update(categoryIdV2={"name": "cpu", "provider": "slurm", "extra": 1}),
        lambda r: r["owner"].pop("projectId"),
        lambda r: r["owner"].update(type="group"),
        lambda r: r["description"].update(scope=7),
    ],
)
async def test_report_usage_bodies_go_would_not_decode_are_400(
    core: tuple[DevCore, str], client: CoreClient, spoil: Any
) -> None:
    await register(client)
    report = good_report()
    spoil(report)
    status, answer = await post(client, "/api/accounting/v2/reportUsage", {"items": [report]})
    assert status == 400, answer
    status, answer = await post(client, "/api/accounting/v2/reportUsage", {"items": [good_report()]})
    assert (status, answer) == (200, {"responses": [True]})


async def test_report_usage_refuses_what_core_refuses(core: tuple[DevCore, str], client: CoreClient) -> None:
    await register(client)
    other_provider = good_report()
    other_provider["categoryIdV2"]["provider"] = "k8s"
    unknown_category = good_report()
    unknown_category["categoryIdV2"]["name"] = "gpu"
    negative = good_report()
    negative["usage"] = -1
    for report, why in [
        (other_provider, "You cannot report usage for this product"),
        (unknown_category, "This category does not exist"),
        (negative, "Absolute usage cannot be negative"),
    ]:
        status, answer = await post(client, "/api/accounting/v2/reportUsage", {"items": [report]})
        assert (status, answer["why"]) == (403, why)


async def test_products_are_registered_as_go_defines_them_and_a_category_keeps_its_first_unit(
    core: tuple[DevCore, str], client: CoreClient
) -> None:
    await register(client)
    held = await client.browse_products(PROVIDER_ID, per_page=1)  # page by page
    assert [p["name"] for p in held] == ["cpu-1", "cpu-4"]
    assert held[1] == product_v2(PRODUCTS[1], PROVIDER_ID)
    hourly = ProductSection(id="cpu-1", category="cpu", cpus=1, accounting_frequency="hour")
    await register(client, [hourly])
    again = await client.browse_products(PROVIDER_ID)
    assert {p["category"]["accountingFrequency"] for p in again} == {"PERIODIC_MINUTE"}
    bad = product_v2(PRODUCTS[0], PROVIDER_ID)
    bad["price"] = 1.5
    assert (await post(client, "/api/products/v2", {"items": [bad]}))[0] == 400
    foreign = product_v2(PRODUCTS[0], "k8s")
    assert (await post(client, "/api/products/v2", {"items": [foreign]}))[0] == 403
    assert (await post(client, "/api/products/v2", {"items": []}))[0] == 400


# -- the command line -------------------------------------------------------------------------------------


def write_config(tmp_path: Path, keys: DevCoreKeys, core_url: str, products: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[provider]
id = "{PROVIDER_ID}"
[ucloud]
url = "{core_url}"
refresh_token_file = "{keys.refresh_token_file}"
public_key_file = "{keys.public_key_file}"
[store]
path = "{tmp_path / 'p.sqlite3'}"
{products}
"""
    )
    os.chmod(keys.refresh_token_file, stat.S_IRUSR | stat.S_IWUSR)
    return config


PRODUCTS_TOML = """
[[products]]
id = "cpu-2"
category = "cpu"
cpus = 2
[[products]]
id = "cash-1"
category = "cash"
accounting_unit = "money"
accounting_frequency = "hour"
price = 0.35
currency = "DKK"
"""


async def test_products_register_and_list_through_the_command_line(
    tmp_path: Path, keys: DevCoreKeys, core: tuple[DevCore, str], capsys: pytest.CaptureFixture[str]
) -> None:
    dev, url = core
    config = write_config(tmp_path, keys, url, PRODUCTS_TOML)
    assert await asyncio.to_thread(main, ["products", "register", "--config", str(config)]) == 0
    assert "registered 2 products" in capsys.readouterr().out
    assert dev.accounting.categories["cash"]["accountingUnit"]["name"] == "DKK"
    assert await asyncio.to_thread(main, ["products", "list", "--config", str(config), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(p["name"], p["price"]) for p in listed} == {("cpu-2", 2), ("cash-1", 350_000)}
    # Core keeps a category's first frequency: registering another one is reported, not hidden.
    config = write_config(tmp_path, keys, url, PRODUCTS_TOML.replace('"hour"', '"day"'))
    assert await asyncio.to_thread(main, ["products", "register", "--config", str(config)]) == 1
    assert "Core keeps category accountingFrequency 'PERIODIC_HOUR'" in capsys.readouterr().err


async def test_usage_command_shows_per_owner_and_category_what_was_reported_and_the_answer(
    tmp_path: Path, keys: DevCoreKeys, core: tuple[DevCore, str], client: CoreClient, capsys: pytest.CaptureFixture[str]
) -> None:
    dev, url = core
    await register(client)
    dev.accounting.set_quota(DONNA.reference, "cpu", 10)
    config = write_config(tmp_path, keys, url, "")
    store = Store(tmp_path / "p.sqlite3")
    count(store, DONNA, "1", 600)
    count(store, ERIK, "2", 60)
    assert await sender(store, client).drain()
    count(store, ERIK, "3", 60)  # waiting, not sent
    assert await asyncio.to_thread(main, ["usage", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "user:donna#1234  cpu       1     40     40" in out and "false (allocation used up)" in out
    assert "user:erik#0042   cpu       2     8      4" in out and "8 (0 tries)" in out
    assert await asyncio.to_thread(main, ["usage", "--config", str(config), "--owner", "erik#0042", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["owner"], r["total"], r["reported_total"], r["pending_total"]) for r in rows] == [("erik#0042", 8, 4, 8)]


async def test_a_total_refused_because_the_category_was_not_registered_goes_out_once_it_is(
    tmp_path: Path, core: tuple[DevCore, str], client: CoreClient
) -> None:
    from provider.slurm.commands import CommandBackend
    from provider.usage import REFUSED_RETRY_MS, UsageMeter

    dev, _ = core
    store = Store(tmp_path / "p.sqlite3")
    count(store, DONNA, "1", 600)  # the admin has not run `products register` yet
    s = sender(store, client)
    assert await s.drain()
    assert store.usage_totals()[0]["core_answer"] == "refused: 403: This category does not exist"
    await register(client)
    clock = [now_ms() + REFUSED_RETRY_MS + 1]
    meter = UsageMeter(store, CommandBackend(), lambda: PRODUCTS, give_up_ms=1, clock=lambda: clock[0], on_queued=s.wake)
    assert not (await meter.run_pass()).error  # no open job: no Slurm call, but the refused total is queued again
    assert await s.drain()
    assert dev.accounting.usage(DONNA.reference, "cpu") == 40
    assert store.usage_totals()[0]["core_answer"] == "true"
