"""What following costs: many websocket followers of one job, frames per second and the daemon's memory.

    .venv/bin/python bench/follow_fanout.py [--followers 100,1000] [--lines 2000]

Starts the daemon as its own process (no Slurm needed: the job is tracked as running and its
stdout.txt is written by this script), connects N followers speaking Core's frames, then:
- idle: all N connected, nothing written for 5 s: the daemon's CPU time and resident memory;
- busy: ``--lines`` lines appended to stdout.txt as fast as one writer goes: frames delivered to all
  followers per second, and the daemon's peak memory.
Compare ratios, not absolute numbers: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provider.store import Store
from provider.ucloud.devcore import DevCoreKeys, job_body
from provider.ucloud.models import JobState

JOB = "424242"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(CPU seconds used, VmRSS MB, VmHWM MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


async def run(followers: int, lines: int, work: Path) -> dict[str, float]:
    keys = DevCoreKeys.load_or_create(work / "keys")
    jobs_dir = work / f"jobs-{followers}"
    (jobs_dir / JOB).mkdir(parents=True)
    stdout = jobs_dir / JOB / "stdout.txt"
    stdout.write_text("started\n")
    store_path = work / f"store-{followers}.sqlite3"
    store = Store(store_path)
    store.track(ucloud_id=JOB, slurm_id="1", cluster="", expected_name=JOB, submitted_at=0, now=0, state=JobState.RUNNING)
    store.close()
    port = free_port()
    config = work / f"provider-{followers}.toml"
    config.write_text(
        f'[provider]\nid = "slurm"\n[server]\nhost = "127.0.0.1"\nport = {port}\nmax_connections = {followers + 64}\n'
        f'[ucloud]\nurl = "http://127.0.0.1:9"\npublic_key_file = "{keys.public_key_file}"\n'
        f'refresh_token_file = "{keys.refresh_token_file}"\n[slurm]\nbackend = "cli"\nbin_dir = "{work}/no-slurm"\n'
        f'[store]\npath = "{store_path}"\n[jobs]\ndirectory = "{jobs_dir}"\n[reconcile]\ninterval = 3600\n'
        f'[accounting]\nenabled = false\n[logging]\nlevel = "warning"\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "provider", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent,
    )
    url = f"http://127.0.0.1:{port}/ucloud/jobs.provider.slurm/websocket?usernameHint=dXNlcg=="
    received = [0] * followers
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            init = json.dumps({"call": "jobs.provider.slurm.follow", "streamId": "s", "payload": {"type": "init", "job": job_body(JOB)},
                               "bearer": "", "project": None})
            sockets = []
            for _ in range(followers):
                ws = await session.ws_connect(url, headers={"Authorization": f"Bearer {keys.service_token()}"}, heartbeat=None)
                await ws.send_str(init)
                sockets.append(ws)

            async def drain(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        received[i] += message.data.count("\\n")  # lines, across frames

            readers = [asyncio.ensure_future(drain(i, ws)) for i, ws in enumerate(sockets)]
            deadline = time.monotonic() + 30
            while min(received) < 1 and time.monotonic() < deadline:  # everyone has the history
                await asyncio.sleep(0.1)
            cpu0, rss_idle, _ = proc_stats(daemon.pid)
            await asyncio.sleep(5)
            cpu1, rss_idle, _ = proc_stats(daemon.pid)
            base = sum(received)
            started = time.monotonic()
            with open(stdout, "a") as out:
                for n in range(lines):
                    out.write(f"line {n} of the busy phase, some text to make it a realistic length\n")
                    if n % 100 == 0:
                        out.flush()
                        await asyncio.sleep(0)
            want = base + lines * followers
            deadline = time.monotonic() + 120
            while sum(received) < want and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            _, _, hwm = proc_stats(daemon.pid)
            for reader in readers:
                reader.cancel()
            for ws in sockets:
                await ws.close()
    finally:
        daemon.terminate()
        daemon.wait(30)
    return {
        "idle_cpu_pct": (cpu1 - cpu0) / 5 * 100,
        "idle_rss": rss_idle,
        "lines_per_s": (sum(received) - base) / elapsed,
        "delivered_pct": (sum(received) - base) / (lines * followers) * 100,
        "hwm": hwm,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", default="100,1000")
    parser.add_argument("--lines", type=int, default=2000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket a follower, here and in the daemon
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    work = Path(tempfile.mkdtemp(prefix="follow-bench-"))
    print(f"{'followers':>9} | {'idle CPU %':>10} {'idle RSS MB':>11} | {'lines/s delivered':>17} {'delivered %':>11} {'peak RSS MB':>11}")
    for n in (int(x) for x in args.followers.split(",")):
        r = asyncio.run(run(n, args.lines, work))
        print(f"{n:>9} | {r['idle_cpu_pct']:>10.1f} {r['idle_rss']:>11.0f} | {r['lines_per_s']:>17,.0f} {r['delivered_pct']:>11.1f} {r['hwm']:>11.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
