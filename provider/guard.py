"""Connection limits the HTTP server needs beyond aiohttp's own: a deadline for request headers, a cap on
open connections, and the listening socket that applies both.

aiohttp (3.9 to 3.14) closes a keep-alive connection that sends nothing for ``keepalive_timeout`` and
stops reading an unread body ``lingering_time`` after the answer, but a client that sends a header a
byte at a time, or that opens connections without end, is kept forever: each costs a socket, a parser
with up to 1 MB of buffered header lines, and one of the process's file descriptors, which the daemon
also needs for sbatch and SQLite. ``GuardedRequestHandler`` adds the two missing limits on top of
aiohttp's own handler; the deadline for a body is ``[server] body_timeout`` in ``api.read_raw``.

Over the cap a new connection is closed at once, before a byte is read: a client learns at once that
the daemon is saturated (and Core retries), instead of waiting in a queue behind the connections that
saturate it. Both events are logged at most once every ``LOG_EVERY`` seconds, with counts, so an
attack cannot flood the journal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

LOG_EVERY = 10.0  # seconds between two log lines about the same kind of cut-off connection


@dataclass
class _Tally:
    """Counts one kind of event and says, at most every ``LOG_EVERY`` seconds, how many happened."""

    event: str
    total: int = 0
    unlogged: int = 0
    last_logged: float = field(default=-LOG_EVERY)

    def add(self, **details: Any) -> None:
        self.total += 1
        self.unlogged += 1
        now = time.monotonic()
        if now - self.last_logged >= LOG_EVERY:
            log.warning(self.event, count=self.unlogged, total=self.total, **details)
            self.unlogged = 0
            self.last_logged = now


@dataclass
class ConnectionGuard:
    """What all connections of one listening socket share: the limits and how many are open."""

    max_connections: int
    header_timeout: float
    open: int = 0
    refused: _Tally = field(default_factory=lambda: _Tally("http.connection_refused"))
    header_timeouts: _Tally = field(default_factory=lambda: _Tally("http.header_timeout"))


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's request handler, plus the connection cap and the header deadline of a ``ConnectionGuard``.

    The header deadline runs from the first byte of a request that is still incomplete to the end of
    its headers: an idle keep-alive connection is not timed by it (``keepalive_timeout`` is), a request
    arriving in one piece never arms it, and a request being handled (its body included) is not
    affected. It reads aiohttp's ``_waiter`` (set while the connection waits for the next request);
    tests/test_connection_limits.py fails if a new aiohttp changes that.
    """

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.refused.add(open=guard.open, max_connections=guard.max_connections)
            transport.close()
            return
        guard.open += 1
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.open -= 1
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_headers():
            self._cancel_header_deadline()
        elif self._header_deadline is None:
            self._header_deadline = self._loop.call_later(self._guard.header_timeout, self._headers_overdue)

    def _waiting_for_headers(self) -> bool:
        """Bytes arrived, yet no whole request: the connection still waits for the rest of the headers."""
        waiter = getattr(self, "_waiter", None)
        return waiter is not None and not waiter.done()

    def _headers_overdue(self) -> None:
        self._header_deadline = None
        if self._admitted and self._waiting_for_headers():
            self._guard.header_timeouts.add(header_timeout=self._guard.header_timeout)
            self.force_close()

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None


class GuardedSite(web.BaseSite):
    """A TCP listening socket whose connections are ``GuardedRequestHandler``s (aiohttp's ``TCPSite``
    builds its handlers itself and takes no handler class)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, make_handler: Callable[[], web.RequestHandler]) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._make_handler = make_handler

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_handler, self._host, self._port, backlog=self._backlog)


def guarded_site(
    runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard, handler_options: dict[str, Any]
) -> GuardedSite:
    """The listening socket for ``runner`` (set up already), with ``handler_options`` for aiohttp's handler
    (``keepalive_timeout``, ``lingering_time``, ...): the same options the runner was given."""
    server = runner.server
    if server is None:
        raise RuntimeError("call runner.setup() first")
    loop = asyncio.get_running_loop()
    return GuardedSite(runner, host, port, lambda: GuardedRequestHandler(server, loop=loop, guard=guard, **handler_options))
