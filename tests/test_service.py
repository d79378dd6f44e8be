"""Running as a service: the systemd unit, the notify protocol, SIGTERM and SIGHUP, secrets on disk.

The daemon runs as a real process (``python -m provider serve``) under a test NOTIFY_SOCKET, talking to
the stand-in Core over loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from helpers import PROVIDER_ID, wait_for
from provider.ucloud.devcore import DevCore, DevCoreKeys, call_provider, job_body

pytestmark = pytest.mark.process


REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "ucloud-slurm-provider.service"


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify checks that ExecStart's program exists: point it at this checkout's.
    program = str(Path(sys.executable).parent / "ucloud-slurm-provider")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/ucloud-slurm-provider/venv/bin/ucloud-slurm-provider", program))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "StateDirectory=", "ConfigurationDirectory=",
                 "User=ucloud-provider", "ProtectSystem=strict", "PrivateTmp=yes", "RestrictAddressFamilies="):
        assert line in text


class NotifySocket:
    """What systemd would receive on NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def seen(self, line: str) -> bool:
        return any(line in message.splitlines() for message in self.drain())


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    url: str
    config: Path
    store: Path
    notify: NotifySocket
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
async def core(aiohttp_server, keys: DevCoreKeys) -> AsyncIterator[tuple[DevCore, str]]:  # type: ignore[no-untyped-def]
    devcore = DevCore(keys, PROVIDER_ID)
    server: TestServer = await aiohttp_server(devcore.make_app(), host="127.0.0.1")
    yield devcore, str(server.make_url("")).rstrip("/")


def write_config(path: Path, keys: DevCoreKeys, core_url: str, port: int, store: Path, products: str = "") -> None:
    path.write_text(
        f"""
[provider]
id = "{PROVIDER_ID}"
[server]
host = "127.0.0.1"
port = {port}
[ucloud]
url = "{core_url}"
public_key_file = "{keys.public_key_file}"
refresh_token_file = "{keys.refresh_token_file}"
[slurm]
backend = "cli"
conf = "{os.environ.get('SLURM_CONF', '/nonexistent/slurm.conf')}"
query_timeout = 5
[store]
path = "{store}"
[reconcile]
interval = 3600
[logging]
level = "debug"
format = "json"
{products}
"""
    )


@pytest.fixture
def start_daemon(tmp_path: Path, keys: DevCoreKeys) -> Iterator:  # type: ignore[type-arg]
    started: list[Daemon] = []

    def start(core_url: str, products: str = "", watchdog_usec: int = 1_000_000) -> Daemon:
        port = unused_port()
        config, store, log = tmp_path / "provider.toml", tmp_path / "provider.sqlite3", tmp_path / "daemon.log"
        write_config(config, keys, core_url, port, store, products)
        notify = NotifySocket(tmp_path / f"notify-{len(started)}.sock")
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog_usec)}
        process = subprocess.Popen(
            [sys.executable, "-m", "provider", "serve", "--config", str(config)],
            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
        )
        daemon = Daemon(process, f"http://127.0.0.1:{port}", config, store, notify, log)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


async def verify(daemon: Daemon, keys: DevCoreKeys, ucloud_ids: list[str]) -> int:
    """Core's verify of these jobs, sent to the daemon process; the HTTP status."""
    async with aiohttp.ClientSession() as session:
        status, _ = await call_provider(
            session, daemon.url, f"/ucloud/{PROVIDER_ID}/jobs/verify", keys, {"items": [job_body(i) for i in ucloud_ids]}
        )
    return status


async def ready(daemon: Daemon, timeout: float = 30) -> None:
    await wait_for(lambda: daemon.notify.seen("READY=1") or daemon.process.poll() is not None, timeout)
    assert daemon.process.poll() is None, daemon.output()


async def test_ready_after_listening_then_watchdog_pings_then_stopping(
    core: tuple[DevCore, str], start_daemon  # type: ignore[no-untyped-def]
) -> None:
    daemon: Daemon = start_daemon(core[1])
    await ready(daemon)
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}/healthz") as resp:
        assert resp.status == 200  # READY=1 came after the port was bound
    await wait_for(lambda: daemon.notify.seen("WATCHDOG=1"), 10)
    assert any(m.startswith("READY=1\nSTATUS=serving") for m in daemon.notify.messages)
    assert daemon.stop() == 0
    assert daemon.notify.seen("STOPPING=1")


async def test_sigterm_during_a_verify_loses_no_update(
    core: tuple[DevCore, str], start_daemon, keys: DevCoreKeys  # type: ignore[no-untyped-def]
) -> None:
    devcore, url = core
    daemon: Daemon = start_daemon(url)
    await ready(daemon)
    ids = [str(700000 + n) for n in range(150)]
    assert await verify(daemon, keys, ids) == 200
    code = await asyncio.to_thread(daemon.stop)  # at once: the pass and the sending may not have run yet
    assert code == 0
    delivered = [u["id"] for u in devcore.updates]
    left = [row[0] for row in sqlite3.connect(daemon.store).execute("SELECT ucloud_id FROM outbox")]
    assert sorted(delivered + left) == sorted(ids)  # each exactly once: sent, or kept for the next start
    assert len(delivered) == 150  # Core was up, so the drain on the way out delivered everything


async def test_sighup_reloads_products_without_dropping_requests(
    core: tuple[DevCore, str], start_daemon, keys: DevCoreKeys  # type: ignore[no-untyped-def]
) -> None:
    product = '[[products]]\nid = "cpu-1"\ncategory = "cpu"\n'
    daemon: Daemon = start_daemon(core[1], products=product)
    await ready(daemon)

    async def products() -> list[str]:
        async with aiohttp.ClientSession() as session:
            status, answer = await call_provider(
                session, daemon.url, f"/ucloud/{PROVIDER_ID}/jobs/retrieveProducts", keys, method="GET"
            )
        assert status == 200
        return [r["product"]["id"] for r in answer["responses"]]

    assert await products() == ["cpu-1"]
    text = daemon.config.read_text() + '[[products]]\nid = "cpu-2"\ncategory = "cpu"\n'
    daemon.config.write_text(text)
    daemon.process.send_signal(signal.SIGHUP)
    await wait_for(lambda: "reload.applied" in daemon.output(), 10)
    assert await products() == ["cpu-1", "cpu-2"]
    assert daemon.process.poll() is None
    daemon.stop()


async def test_a_refresh_token_readable_by_others_stops_the_start(
    core: tuple[DevCore, str], start_daemon, keys: DevCoreKeys  # type: ignore[no-untyped-def]
) -> None:
    keys.refresh_token_file.chmod(0o644)
    try:
        daemon: Daemon = start_daemon(core[1])
        assert daemon.process.wait(30) == 2
        assert "is readable by other users; run: chmod o-rwx" in daemon.output()
    finally:
        keys.refresh_token_file.chmod(0o600)


async def test_tokens_never_reach_the_log(
    core: tuple[DevCore, str], start_daemon, keys: DevCoreKeys  # type: ignore[no-untyped-def]
) -> None:
    devcore, url = core
    daemon: Daemon = start_daemon(url)
    await ready(daemon)
    assert await verify(daemon, keys, ["5"]) == 200
    await wait_for(lambda: len(devcore.updates) == 1, 30)
    daemon.stop()
    output = daemon.output()
    assert "core.token_refreshed" in output  # the refresh happened and was logged...
    assert keys.refresh_token not in output  # ...without the refresh token
    assert "eyJ" not in output  # and no JWT (access or service token) anywhere
    for line in output.splitlines():
        if line.startswith("{"):
            json.loads(line)  # the log is JSON lines for journald



@pytest.mark.slow
def test_install_script_sets_up_user_directories_modes_and_unit(tmp_path: Path, keys: DevCoreKeys) -> None:
    if os.geteuid() != 0:
        pytest.skip("deploy/install.sh creates a system user: run the suite as root")
    conf_dir, unit_dir, prefix = tmp_path / "etc", tmp_path / "units", tmp_path / "opt"
    conf_dir.mkdir(mode=0o755)
    shutil.copy(keys.refresh_token_file, conf_dir / "refresh_token")
    (conf_dir / "refresh_token").chmod(0o644)  # as an admin might leave it
    user = "ucloudtest2"
    env = {**os.environ, "PREFIX": str(prefix), "CONF_DIR": str(conf_dir), "UNIT_DIR": str(unit_dir), "SERVICE_USER": user}
    try:
        for _ in range(2):  # idempotent
            done = subprocess.run([str(REPO / "deploy" / "install.sh")], env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr
        import grp
        import pwd
        import stat

        assert pwd.getpwnam(user).pw_shell == "/usr/sbin/nologin"
        token = (conf_dir / "refresh_token").stat()
        assert stat.S_IMODE(token.st_mode) == 0o640 and grp.getgrgid(token.st_gid).gr_name == user
        assert stat.S_IMODE(conf_dir.stat().st_mode) == 0o750
        assert (conf_dir / "config.toml").read_text() == (REPO / "config.example.toml").read_text()
        unit = (unit_dir / UNIT.name).read_text()
        assert f"ExecStart={prefix}/venv/bin/ucloud-slurm-provider serve --config {conf_dir}/config.toml" in unit
        assert f"User={user}" in unit
        check = subprocess.run(
            [str(prefix / "venv" / "bin" / "ucloud-slurm-provider"), "--help"], capture_output=True, text=True
        )
        assert check.returncode == 0
        if shutil.which("systemd-analyze"):
            verified = subprocess.run(["systemd-analyze", "verify", str(unit_dir / UNIT.name)], capture_output=True, text=True)
            assert verified.returncode == 0, verified.stderr
    finally:
        subprocess.run(["userdel", user], check=False, capture_output=True)
        subprocess.run(["groupdel", user], check=False, capture_output=True)
