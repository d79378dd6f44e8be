"""Stopping the outbox sender always stops it, even when a wake-up and the stop arrive together.

Python 3.11's ``asyncio.wait_for`` returns normally, and so drops a cancellation, when the awaited
thing finishes in the same loop step as the cancel; the sender's back-off wait then looped on for ever
and the daemon's shutdown (and a test's teardown) hung. Seen in the test suite; this reproduces it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from provider.outbox import OutboxSender
from provider.store import Store
from provider.ucloud.core import CoreClient
from provider.ucloud.models import JobState, JobUpdate


async def test_a_wake_up_that_coincides_with_the_stop_does_not_keep_the_sender_alive(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    now = int(time.time() * 1000)
    store.enqueue("1", JobUpdate(state=JobState.RUNNING, status="s", timestamp=now), now)
    async with aiohttp.ClientSession() as session:
        core = CoreClient("http://127.0.0.1:9", "token", session, timeout=1)  # nothing listens: sends fail
        sender = OutboxSender(store, core, min_backoff=30, max_backoff=30, jitter=lambda: 0.0)
        task = asyncio.ensure_future(sender.run())
        deadline = time.monotonic() + 20
        while sender.failures == 0:  # the sender is now in its back-off wait
            assert time.monotonic() < deadline, "the sender never tried Core"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        sender.wake()
        task.cancel()  # in the same loop step as the wake-up
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), 5)
    store.close()
