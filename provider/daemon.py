"""Running the daemon as a service: listen, tell systemd, ping the watchdog, reload on SIGHUP, drain on SIGTERM.

Start-up order: the store and Slurm are checked and the port is bound before ``READY=1``, so
``systemctl start`` returns only when Core can be served. SIGTERM stops accepting requests, lets the
ones in flight finish, and gives the outbox one last chance to reach Core; what it cannot send stays
in SQLite for the next start.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from provider.appkeys import BACKEND, SETTINGS, STORE, TASKS
from provider.config import RELOADABLE, ConfigError, Settings, load_settings
from provider.guard import ConnectionGuard, guarded_site
from provider.logs import configure_logging
from provider.systemd import notify, watchdog_interval
from provider.web import make_app

log = structlog.get_logger(__name__)

# Seconds an unread body is still read (and dropped) after the answer, so the client sees the answer
# rather than a reset; a slow body sent to a route that never reads it is cut off after this.
LINGER_SECONDS = 5.0


async def serve(settings: Settings, config_path: Path | None, *, shutdown_timeout: float = 20.0) -> None:
    app = make_app(settings)
    server = settings.server
    handler_options: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": server.idle_timeout,
        "lingering_time": LINGER_SECONDS,
    }
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout, **handler_options)
    await runner.setup()
    guard = ConnectionGuard(max_connections=server.max_connections, header_timeout=server.header_timeout)
    site = guarded_site(runner, server.host, server.port, guard, handler_options)
    await site.start()
    status = await startup_check(app)
    # What start-up made (modules, models, the app) lives as long as the process: out of the cyclic
    # collector's sight, the collections that a large pass or body triggers walk only what is new.
    gc.collect()
    gc.freeze()
    notify("READY=1", f"STATUS={status}")
    log.info("serve.ready", host=settings.server.host, port=settings.server.port, status=status)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(app, config_path))
    watchdog = asyncio.ensure_future(watchdog_loop(app))
    try:
        await stop.wait()
    finally:
        log.info("serve.stopping")
        notify("STOPPING=1", "STATUS=draining requests and the outbox")
        watchdog.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("serve.stopped")


async def startup_check(app: web.Application) -> str:
    """One look at the store and Slurm, for systemd's STATUS and the log. Slurm being down does not
    stop the daemon: it keeps serving Core and reconciles once Slurm answers."""
    await asyncio.to_thread(app[STORE].ping)
    live = await app[BACKEND].live_jobs()
    if not live.ok:
        log.warning("serve.slurm_unreachable", error=live.error)
        return f"serving; Slurm not answering yet ({live.error[:120]})"
    return f"serving; Slurm answers ({len(live.jobs)} jobs in slurmctld)"


async def watchdog_loop(app: web.Application) -> None:
    """Ping systemd's watchdog while the loops that carry the product are alive."""
    interval = watchdog_interval()
    if interval is None:
        return
    tasks = app[TASKS]
    while True:
        dead = [t.get_name() for t in tasks if t.done()]
        if dead:
            log.error("watchdog.loop_dead", loops=dead)
        else:
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def reload(app: web.Application, config_path: Path | None) -> None:
    """SIGHUP: re-read the file; apply what can change live, name what needs a restart."""
    if config_path is None:
        log.info("reload.nothing_to_read", why="no --config file")
        return
    try:
        new = load_settings(config_path)
    except ConfigError as exc:
        log.error("reload.refused", error=str(exc))
        return
    restart = app[SETTINGS].reload(new)
    configure_logging(new.logging.level, new.logging.format)
    log.info("reload.applied", sections=list(RELOADABLE), needs_restart=restart)
    notify("STATUS=serving; settings reloaded")

