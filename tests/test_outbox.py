"""Updates for Core: at most 100 a request, nothing lost while Core is down, a refused job dropped alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from helpers import HarnessFactory, captured_logs, wait_for
from provider.appkeys import SENDER
from provider.store import Store
from provider.ucloud.devcore import DevCore
from provider.ucloud.models import JobState, JobUpdate


def queue(store, ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time() * 1000)
    for ucloud_id in ids:
        store.enqueue(ucloud_id, JobUpdate(state=JobState.RUNNING, status="Your job is now running", timestamp=now), now)


async def test_batches_hold_at_most_100_updates_in_order(make_harness: HarnessFactory, tmp_path: Path) -> None:
    store_path = tmp_path / "queued.sqlite3"
    ids = [str(n) for n in range(1, 251)]
    queue(Store(store_path), ids)  # queued before the daemon starts, so it finds all 250 at once
    h = await make_harness(store_path=store_path)
    await wait_for(lambda: len(h.core.updates) == 250, 30)
    assert [len(r) for r in h.core.requests] == [100, 100, 50]
    assert [u["id"] for u in h.core.updates] == ids


async def test_nothing_is_lost_while_core_is_down(make_harness: HarnessFactory, tmp_path: Path) -> None:
    h = await make_harness()
    h.core.fail_with = 503
    queue(h.store, ["1", "2", "3"])
    sender = h.client.app[SENDER]  # type: ignore[index]
    sender.wake()
    await wait_for(lambda: sender.failures >= 2, 30)
    assert h.store.outbox_stats().depth == 3 and h.core.updates == []
    h.core.fail_with = None
    await wait_for(lambda: len(h.core.updates) == 3, 30)
    assert h.store.outbox_stats().depth == 0


async def test_queued_updates_survive_a_restart(make_harness: HarnessFactory, tmp_path: Path) -> None:
    store_path = tmp_path / "durable.sqlite3"
    first = await make_harness(store_path=store_path)
    first.core.fail_with = 503
    queue(first.store, ["10", "11"])
    await first.client.close()  # the daemon stops with Core still down

    core = DevCore(first.keys, "slurm")
    await make_harness(store_path=store_path, core=core)  # the restarted daemon, on the same store
    await wait_for(lambda: len(core.updates) == 2, 30)
    assert [u["id"] for u in core.updates] == ["10", "11"]


async def test_a_job_core_refuses_is_dropped_and_the_rest_delivered(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    h.core.deleted_jobs.add("2")
    queue(h.store, ["1", "2", "3"])
    h.client.app[SENDER].wake()  # type: ignore[index]
    await wait_for(lambda: len(h.core.updates) == 2, 30)
    assert [u["id"] for u in h.core.updates] == ["1", "3"]
    await wait_for(lambda: h.store.outbox_stats().depth == 0, 10)


async def test_the_log_events_the_admin_guide_names_for_the_outbox(make_harness: HarnessFactory) -> None:
    """docs/admin.md tells admins to search for outbox.sent and outbox.rejected_by_core, with these fields."""
    h = await make_harness()
    h.core.deleted_jobs.add("2")
    with captured_logs() as logs:
        queue(h.store, ["1", "2", "3"])
        h.client.app[SENDER].wake()  # type: ignore[index]
        await wait_for(lambda: h.store.outbox_stats().depth == 0, 30)
    rejected = [e for e in logs if e["event"] == "outbox.rejected_by_core"]
    assert [e["ucloud_ids"] for e in rejected] == [["2"]] and rejected[0]["log_level"] == "warning"
    assert sum(e["updates"] for e in logs if e["event"] == "outbox.sent") == 2


async def test_the_access_token_is_refreshed_before_it_runs_out(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    h.core.access_lifetime = 60  # below the 3-minute margin: every call refreshes first
    queue(h.store, ["1"])
    h.client.app[SENDER].wake()  # type: ignore[index]
    await wait_for(lambda: len(h.core.updates) == 1, 30)
    queue(h.store, ["2"])
    h.client.app[SENDER].wake()  # type: ignore[index]
    await wait_for(lambda: len(h.core.updates) == 2, 30)
    assert h.core.refreshes >= 2


async def test_a_401_gets_one_token_refresh_and_the_update_is_delivered(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    queue(h.store, ["1"])
    h.client.app[SENDER].wake()  # type: ignore[index]
    await wait_for(lambda: len(h.core.updates) == 1, 30)
    refreshes = h.core.refreshes
    await asyncio.sleep(1.1)  # token times are whole seconds
    h.core.revoked_before = int(time.time())  # Core no longer takes the token the daemon holds
    queue(h.store, ["2"])
    h.client.app[SENDER].wake()  # type: ignore[index]
    await wait_for(lambda: len(h.core.updates) == 2, 30)
    assert h.core.refreshes == refreshes + 1
