"""Usage accounting against the real Slurm: what Core is charged equals a hand computation from sacct.

Jobs of two users and one project run for known times on known products; accounting passes are run
by hand (the loop's interval is an hour) while they run and after they end; the stand-in Core's
wallets (absolute, scoped reports applied as Core applies them) are compared with totals computed
here, independently of the provider's parser, from ``sacct -o JobIDRaw,ElapsedRaw,AllocTRES``.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from helpers import PROVIDER_ID, Harness, HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.appkeys import USAGE_METER, USAGE_SENDER
from provider.config import ProductSection
from provider.products import product_v2
from provider.ucloud.devcore import DevCore, DevCoreKeys, job_body

pytestmark = pytest.mark.slurm

SCRIPT = """#!/bin/bash
sleep "${UCLOUD_PARAM_SECONDS:-0}"
"""
DONNA, ERIK, PROJECT = "donna#1234", "erik#0042", "6c1a0b2e-0000-4000-8000-000000000001"
CASH_PRICE = 1.5  # DKK per node-minute: 25,000 millionths a node-second, so seconds show in the total


def sections(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "sleep.sh"
    script.write_text(SCRIPT)
    return {
        "jobs": {"directory": str(tmp_path / "jobs")},
        "products": [
            {"id": "cpu-1", "category": "cpu", "partition": "normal", "cpus": 1, "max_time_minutes": 10},
            {"id": "cpu-4", "category": "cpu", "partition": "normal", "cpus": 4, "max_time_minutes": 10},
            {"id": "cash-2", "category": "cash", "partition": "normal", "cpus": 2, "max_time_minutes": 10,
             "accounting_unit": "money", "price": CASH_PRICE, "currency": "DKK"},
        ],
        "applications": [
            {"name": "sleeper", "version": "*", "script": str(script),
             "parameters": {"seconds": {"type": "integer"}}},
        ],
        "accounting": {"interval": 3600},
    }


def core_with_products(keys: DevCoreKeys, config: dict[str, Any]) -> DevCore:
    core = DevCore(keys, PROVIDER_ID)
    core.accounting.create_products(
        PROVIDER_ID, [product_v2(ProductSection(**p), PROVIDER_ID) for p in config["products"]]
    )
    return core


async def start(make_harness: HarnessFactory, tmp_path: Path, core: DevCore, store: Path) -> Harness:
    return await make_harness(store_path=store, core=core, sections=sections(tmp_path), interval=1, max_interval=2)


async def submit(h: Harness, owner: str, product: str, seconds: int, project: str | None = None) -> str:
    category = "cash" if product.startswith("cash") else "cpu"
    job = job_body(
        new_ucloud_id(), "IN_QUEUE", provider=PROVIDER_ID, application=("sleeper", "1"), product=(product, category),
        parameters={"seconds": {"type": "integer", "value": seconds}}, time_allocation=(0, 5, 0),
        owner=owner, project=project, created_at=int(time.time() * 1000),
    )
    status, answer = await h.call("jobs", {"items": [job]}, username=owner)
    assert status == 200, answer
    return str(job["id"])


def wait_accounted_start(slurm: LocalSlurm, slurm_ids: list[str], timeout: float = 60) -> None:
    """Until slurmdbd has recorded every job's start with its allocation (sacct shows ElapsedRaw above 0
    and the nodes): it lags slurmctld by seconds on a busy machine, and a usage pass before that counts
    a job that squeue already shows running as not started (CI met it: a partial total of 0)."""
    deadline = time.monotonic() + timeout
    while True:
        out = slurm.run("sacct", "-X", "-n", "-P", "-j", ",".join(slurm_ids), "-o", "JobIDRaw,ElapsedRaw,AllocTRES").stdout
        started = {
            row[0] for row in (line.split("|") for line in out.splitlines() if line.count("|") == 2)
            if row[1].isdigit() and int(row[1]) > 0 and "node=" in row[2]
        }
        if started >= set(slurm_ids):
            return
        assert time.monotonic() < deadline, f"slurmdbd has not recorded the start of {set(slurm_ids) - started}"
        time.sleep(0.5)


def hand_totals(slurm: LocalSlurm, jobs: dict[str, tuple[str, str]], store_slurm_ids: dict[str, str]) -> dict[tuple[str, str], int]:
    """Per (owner, category): floor(sum of CPUs x ElapsedRaw / 60) core-minutes for "cpu", and
    floor(sum of nodes x ElapsedRaw x 1,500,000 / 60) millionths of a DKK for "cash"."""
    ids = ",".join(store_slurm_ids.values())
    out = slurm.run("sacct", "-X", "-n", "-P", "-j", ids, "-o", "JobIDRaw,ElapsedRaw,AllocTRES").stdout
    by_slurm_id = {}
    for line in out.splitlines():
        slurm_id, elapsed, tres = line.split("|")
        counts = dict(item.split("=") for item in tres.split(",") if item)
        by_slurm_id[slurm_id] = (int(elapsed), int(counts["cpu"]), int(counts["node"]))
    numerators: dict[tuple[str, str], int] = defaultdict(int)
    for ucloud_id, (owner, category) in jobs.items():
        elapsed, cpus, nodes = by_slurm_id[store_slurm_ids[ucloud_id]]
        numerators[(owner, category)] += cpus * elapsed if category == "cpu" else nodes * elapsed * 1_500_000
    return {key: value // 60 for key, value in numerators.items()}


async def wait_final(h: Harness, ucloud_ids: list[str], timeout: float = 120) -> None:
    """Until the job map holds every job as finished (the monitor saw them end)."""
    await wait_for(lambda: all(j.state.is_final for j in h.store.get(ucloud_ids).values()), timeout, interval=0.5)


async def settle_usage(h: Harness, timeout: float = 120) -> None:
    """Accounting passes until sacct has had its last word on every job (it lags after an outage);
    a pass whose sacct fails (slurmdbd still starting) changes nothing and is simply run again."""
    deadline = time.monotonic() + timeout
    while True:
        await h.client.app[USAGE_METER].run_pass()
        await h.client.app[USAGE_SENDER].drain()
        if h.store.usage_stats().open_jobs == 0:
            return
        assert time.monotonic() < deadline, "sacct never gave its final record of every job"
        await asyncio.sleep(1)


async def pass_and_send(h: Harness) -> None:
    report = await h.client.app[USAGE_METER].run_pass()
    assert not report.error, report.error
    await h.client.app[USAGE_SENDER].drain()


def wallets(core: DevCore, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {key: core.accounting.usage(*key) for key in keys}


async def test_two_users_and_a_project_are_charged_what_sacct_recorded_and_a_job_across_a_pass_once(
    slurm: LocalSlurm, make_harness: HarnessFactory, keys: DevCoreKeys, tmp_path: Path
) -> None:
    core = core_with_products(keys, sections(tmp_path))
    h = await start(make_harness, tmp_path, core, tmp_path / "p.sqlite3")
    jobs = {
        await submit(h, DONNA, "cpu-4", 20): (DONNA, "cpu"),
        await submit(h, DONNA, "cpu-1", 12): (DONNA, "cpu"),
        await submit(h, DONNA, "cash-2", 9): (DONNA, "cash"),
        await submit(h, ERIK, "cpu-4", 16): (ERIK, "cpu"),
        await submit(h, DONNA, "cpu-4", 18, project=PROJECT): (PROJECT, "cpu"),
        await submit(h, ERIK, "cash-2", 24, project=PROJECT): (PROJECT, "cash"),
    }
    slurm_ids = {ucloud_id: job.slurm_id for ucloud_id, job in h.store.get(jobs).items()}
    for slurm_id in slurm_ids.values():
        slurm.wait_state(slurm_id, {"RUNNING", "COMPLETED"}, 60)
    await asyncio.sleep(4)
    wait_accounted_start(slurm, list(slurm_ids.values()))
    await pass_and_send(h)  # every job is running: each is counted up to now
    partial = wallets(core, sorted(set(jobs.values())))
    seen = slurm.run("sacct", "-X", "-n", "-P", "-j", ",".join(slurm_ids.values()), "-o", "JobIDRaw,JobName,State,ElapsedRaw,AllocTRES").stdout
    assert partial[(PROJECT, "cash")] > 0 and partial[(DONNA, "cash")] > 0, (partial, seen, h.store.usage_open())
    await wait_final(h, list(jobs))
    await settle_usage(h)
    expected = hand_totals(slurm, jobs, slurm_ids)
    assert all(expected.values()), expected  # the jobs are long enough for every total to be above 0
    print(f"\nhand computation from sacct: {expected}\nCore's wallets: {wallets(core, sorted(expected))}")
    assert wallets(core, sorted(expected)) == expected
    assert {(r["owner"], r["category"]): r["reported_total"] for r in h.store.usage_totals()} == expected
    # The project's 24-s job ran across the first pass and is counted once: Core was told a partial
    # total, then the final one, and holds the final one (not their sum).
    told = [r["usage"] for r in core.accounting.reports if r["owner"]["projectId"] == PROJECT and r["categoryIdV2"]["name"] == "cash"]
    assert len(told) == 2 and 0 < told[0] < told[1] == expected[(PROJECT, "cash")], told
    # A pass with nothing new sends nothing: finished jobs are never asked about again.
    calls = h.backend.calls["sacct_usage"]
    before = len(core.accounting.reports)
    await pass_and_send(h)
    assert h.backend.calls["sacct_usage"] == calls and len(core.accounting.reports) == before


async def test_a_restart_a_core_outage_and_a_slurmdbd_outage_in_the_middle_change_nothing(
    slurm: LocalSlurm, make_harness: HarnessFactory, keys: DevCoreKeys, tmp_path: Path
) -> None:
    core = core_with_products(keys, sections(tmp_path))
    store = tmp_path / "p.sqlite3"
    h = await start(make_harness, tmp_path, core, store)
    jobs = {
        await submit(h, DONNA, "cash-2", 25): (DONNA, "cash"),
        await submit(h, ERIK, "cpu-4", 25): (ERIK, "cpu"),
        await submit(h, ERIK, "cash-2", 10, project=PROJECT): (PROJECT, "cash"),
    }
    slurm_ids = {ucloud_id: job.slurm_id for ucloud_id, job in h.store.get(jobs).items()}
    for slurm_id in slurm_ids.values():
        slurm.wait_state(slurm_id, {"RUNNING", "COMPLETED"}, 60)
    await asyncio.sleep(5)
    wait_accounted_start(slurm, list(slurm_ids.values()))
    core.accounting.fail_with = 503  # Core goes down
    meter, sender = h.client.app[USAGE_METER], h.client.app[USAGE_SENDER]
    assert not (await meter.run_pass()).error
    assert not await sender.drain()
    counted = {(r["owner"], r["category"]): r["total"] for r in h.store.usage_totals()}
    assert counted[(DONNA, "cash")] > 0 and not core.accounting.reports
    await h.client.close()  # the daemon stops (its last drain fails: Core is down)

    slurm.ctl("slurmdbd", "stop")
    try:
        h = await start(make_harness, tmp_path, core, store)  # ... and starts again on the same database
        failed = await h.client.app[USAGE_METER].run_pass()
        assert failed.error  # sacct cannot answer: nothing changes
        assert {(r["owner"], r["category"]): r["total"] for r in h.store.usage_totals()} == counted
    finally:
        slurm.ctl("slurmdbd", "start")
    await wait_final(h, list(jobs), timeout=180)
    core.accounting.fail_with = None  # Core comes back
    await settle_usage(h)
    expected = hand_totals(slurm, jobs, slurm_ids)
    assert all(expected.values()), expected
    print(f"\nhand computation from sacct: {expected}\nCore's wallets: {wallets(core, sorted(expected))}")
    assert wallets(core, sorted(expected)) == expected
    assert {(r["owner"], r["category"]): r["reported_total"] for r in h.store.usage_totals()} == expected
    assert h.store.usage_stats().pending == 0


async def test_an_owner_whose_allocation_is_used_up_is_recorded_and_with_cancel_their_jobs_stop(
    slurm: LocalSlurm, make_harness: HarnessFactory, keys: DevCoreKeys, tmp_path: Path
) -> None:
    config = sections(tmp_path)
    core = core_with_products(keys, config)
    core.accounting.set_quota(DONNA, "cash", 100_000)  # 4 node-seconds at 25,000 a second
    config["accounting"]["on_exhausted"] = "cancel"
    h = await make_harness(store_path=tmp_path / "p.sqlite3", core=core, sections=config, interval=1, max_interval=2)
    over = await submit(h, DONNA, "cash-2", 120)
    other = await submit(h, ERIK, "cash-2", 120)
    slurm_ids = {u: j.slurm_id for u, j in h.store.get([over, other]).items()}
    for slurm_id in slurm_ids.values():
        slurm.wait_state(slurm_id, {"RUNNING"}, 60)
    await asyncio.sleep(6)
    await pass_and_send(h)
    answers = {r["owner"]: r["core_answer"] for r in h.store.usage_totals()}
    assert answers == {DONNA: "false", ERIK: "true"}
    slurm.wait_state(slurm_ids[over], {"CANCELLED"}, 30)
    assert slurm.state(slurm_ids[other]) == "RUNNING"  # only the owner whose allocation is used up
    await wait_final(h, [over])
    assert h.store.get([over])[over].state.value == "SUCCESS"  # a cancellation, reported as UCloud does
    metrics = await (await h.client.get("/metrics")).text()
    assert "ucloud_provider_usage_exhausted_owners 1.0" in metrics
    assert "ucloud_provider_usage_exhausted_answers_total 1.0" in metrics
    reported = sum(r["reported_total"] for r in h.store.usage_totals())
    assert f'ucloud_provider_usage_reported_units{{category="cash"}} {float(reported)}' in metrics
    await h.call("jobs/terminate", {"items": [job_body(other, "RUNNING", provider=PROVIDER_ID)]}, username=ERIK)
