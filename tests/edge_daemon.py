"""The daemon as a real process (``python -m provider serve``) with chosen ``[server]`` limits, and the
stand-in Core in a thread, for tests that talk raw HTTP and sockets from synchronous code."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from provider.ucloud.devcore import DevCore, DevCoreKeys

PROVIDER_ID = "slurm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        """The daemon's high-water resident memory (VmHWM), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")


@contextmanager
def devcore_in_thread(keys: DevCoreKeys) -> Iterator[tuple[DevCore, str]]:
    """The stand-in Core on its own event loop in a thread, so synchronous tests can run beside it."""
    core = DevCore(keys, PROVIDER_ID)
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(core.make_app(), access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield core, f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@contextmanager
def daemon_process(
    work: Path, keys: DevCoreKeys, core_url: str, *, server: dict[str, Any] | None = None, extra: str = ""
) -> Iterator[DaemonProcess]:
    """Start the daemon with ``[server]`` settings ``server`` (plus TOML ``extra``); stop it afterwards."""
    port = free_port()
    server_lines = "\n".join(f"{key} = {toml_value(value)}" for key, value in (server or {}).items())
    config = work / "provider.toml"
    config.write_text(
        f"""
[provider]
id = "{PROVIDER_ID}"
[server]
host = "127.0.0.1"
port = {port}
{server_lines}
[ucloud]
url = "{core_url}"
public_key_file = "{keys.public_key_file}"
refresh_token_file = "{keys.refresh_token_file}"
timeout = 5
[slurm]
backend = "cli"
conf = "{os.environ.get('SLURM_CONF', '/nonexistent/slurm.conf')}"
query_timeout = 20
[store]
path = "{work / 'provider.sqlite3'}"
[jobs]
directory = "{work / 'jobs'}"
[reconcile]
interval = 3600
[logging]
level = "debug"
format = "json"
{extra}
"""
    )
    log = work / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "provider", "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    daemon = DaemonProcess(process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the daemon did not start:\n{daemon.output()}") from None
                time.sleep(0.1)
        yield daemon
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
