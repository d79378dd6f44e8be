"""The outbox sender: every update for Core leaves through here, in order, exactly once.

The sender drains the outbox in order, at most 100 updates a request; a job Core refuses (404) is dropped
alone and the rest are sent; anything else is retried with exponential back-off, so nothing is lost
while Core is down.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog

from provider.store import OutboxItem, Store
from provider.ucloud.core import CoreClient

log = structlog.get_logger(__name__)


class RetryingDrainer:
    """Drains a durable queue for Core: when woken, and with exponential back-off (and jitter) while
    Core fails, so an outage never becomes a storm of requests. Subclasses say what one drain is."""

    name = "drainer"

    def __init__(
        self, *, min_backoff: float = 1.0, max_backoff: float = 60.0, jitter: Callable[[], float] = random.random
    ) -> None:
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._jitter = jitter
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Let ``run`` return once its request in flight is answered. Cancelling it instead could lose
        Core's answer to a batch Core has already taken, and the batch would be sent twice."""
        self._stopping = True
        self._wake.set()

    async def drain(self) -> bool:
        """Send until the queue is empty (True) or Core fails (False)."""
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(self) -> None:
        backoff = self._min_backoff
        while not self._stopping:
            try:
                progressed = await self.drain()
            except Exception:  # the store failing must not kill the sender
                log.exception(f"{self.name}.crashed")
                progressed = False
            if self.stopping:  # stop() may have come during the drain
                return
            if progressed:
                backoff = self._min_backoff
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = backoff * (1 + self._jitter() * 0.2)
            backoff = min(self._max_backoff, backoff * 2)
            try:  # not asyncio.wait_for: on Python 3.11 it drops a cancel that meets a wake-up
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()


class OutboxSender(RetryingDrainer):
    """Sends queued updates to Core, oldest first, and keeps them until Core has them."""

    name = "outbox"

    def __init__(
        self,
        store: Store,
        client: CoreClient,
        *,
        batch: int = 100,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(min_backoff=min_backoff, max_backoff=max_backoff, jitter=jitter)
        self._store = store
        self._client = client
        self._batch = batch
        self._singles = False  # after an unexplained 404, send one at a time to find the refused job
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self.last_error = ""  # why the latest request to Core failed ("" = it worked, or none was needed)

    async def drain(self) -> bool:
        """Send until the outbox is empty (True) or Core fails (False)."""
        while True:
            items = await asyncio.to_thread(self._store.outbox_peek, 1 if self._singles else self._batch)
            if not items:
                self._singles = False
                return True
            if not await self._send(items):
                return False

    async def _send(self, items: list[OutboxItem]) -> bool:
        result = await self._client.push_updates([{"id": i.ucloud_id, "update": i.update} for i in items])
        seqs = [i.seq for i in items]
        self.last_error = "" if result.delivered or result.rejected_ids or result.rejected_unnamed else result.error
        if result.delivered:
            await asyncio.to_thread(self._store.outbox_done, seqs)
            self.sent += len(items)
            log.info("outbox.sent", updates=len(items), jobs=len({i.ucloud_id for i in items}))
            return True
        if result.rejected_ids or result.rejected_unnamed:
            # Core refused the request because of one job. Drop the job it names (a lone item: that
            # one) and send the rest again; if it named none of ours, go one at a time until it does.
            refused = {items[0].ucloud_id} if len(items) == 1 else set(result.rejected_ids)
            drop = [i.seq for i in items if i.ucloud_id in refused]
            if drop:
                await asyncio.to_thread(self._store.outbox_done, drop)
                self.dropped += len(drop)
                log.warning("outbox.rejected_by_core", ucloud_ids=sorted(refused), why=result.error)
            else:
                log.warning("outbox.rejected_unnamed", updates=len(items), why=result.error)
                self._singles = True
            return True
        self.failures += 1
        await asyncio.to_thread(self._store.outbox_failed, seqs, result.error)
        log.warning("outbox.send_failed", updates=len(items), error=result.error)
        return False
