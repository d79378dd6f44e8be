"""Pass scheduling: however often Slurm fails, re-checks cannot multiply into a query storm."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from provider.reconcile import DebounceRules
from provider.slurm.commands import CommandBackend
from provider.states import StateTable
from provider.store import Store
from provider.sync import Belief, PassTimings, Synchronizer


async def test_failing_passes_share_one_recheck_timer(tmp_path: Path) -> None:
    # A Slurm whose commands cannot even be started: every pass fails and asks for a re-check.
    backend = CommandBackend(bin_dir=str(tmp_path / "no-slurm-here"), timeout=5)
    store = Store(tmp_path / "s.sqlite3")
    now = int(time.time() * 1000)
    store.track(ucloud_id="1", slurm_id="41", cluster="", expected_name="1", submitted_at=now, now=now)
    sync = Synchronizer(store, backend, StateTable(), DebounceRules(), PassTimings(confirm_interval_s=0.5))
    worker = asyncio.ensure_future(sync.run())
    try:
        for _ in range(10):  # ten monitor ticks in a row, each pass failing
            await sync.request_active()
        started = sync.passes
        await asyncio.sleep(2.2)
        # One re-check chain: about one pass per 0.5 s, not ten.
        assert sync.passes - started <= 5, sync.passes - started
        assert sync.passes - started >= 3  # and the re-checks do happen
        assert backend.calls["squeue"] == sync.passes and sync.last_report is not None
        assert sync.last_report.live_ok is False
    finally:
        worker.cancel()
        store.close()


async def test_an_earlier_request_moves_the_shared_timer_forward(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    sync = Synchronizer(store, CommandBackend(bin_dir=str(tmp_path)), StateTable(), DebounceRules())
    worker = asyncio.ensure_future(sync.run())
    try:
        sync.request_later({"a": Belief()}, 30)
        sync.request_later({"b": Belief()}, 0.1)  # e.g. a terminate wants a pass soon
        await asyncio.sleep(0.5)
        assert sync.passes == 1  # both were handled in that one early pass
        assert sync.waiting_later == frozenset() and sync.idle
    finally:
        worker.cancel()
        store.close()
