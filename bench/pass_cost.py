"""What a reconciliation pass costs over real jobs, next to the raw Slurm calls it makes, in one run.

    . /tmp/ucloud-slurm-local/env.sh     # a running Slurm, best with MinJobAge=30 (see bench/README.md)
    .venv/bin/python bench/pass_cost.py [--jobs 1000,5000,10000] [--repeat 5] [--memory 10000,100000]

For N tracked jobs that really exist (half finished jobs that only sacct lists, half held jobs that
squeue lists, each named with its UCloud id as the daemon names them) it times, as medians of
``--repeat`` runs:

- the raw squeue and sacct with the daemon's exact arguments;
- a verify pass (Core's beliefs for all N), a monitor pass (every active job), each on a fresh copy of
  the same store, and a steady monitor pass (nothing changed in Slurm since the previous one);
- the Slurm calls and the SQLite rows each pass writes.

Then a verify of 1,024 jobs through the daemon's HTTP API with a stand-in Core (answer time, and the
time until Core has every update), and the peak resident memory (VmHWM) of the daemon process
tracking ``--memory`` active jobs after its first monitor pass. Compare ratios, not absolute times:
the machines are shared and noisy. The held jobs are cancelled at the end (``--keep`` leaves them for
the next run, which then submits none).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp import ClientSession, web
from slurm_jobs import BenchJobs, cancel_held, ensure_jobs

from provider.config import settings_from_dict
from provider.logs import configure_logging
from provider.reconcile import DebounceRules
from provider.slurm.commands import CommandBackend, sacct_argv, squeue_argv
from provider.slurm.process import run_command, slurm_environment
from provider.states import StateTable
from provider.store import Store
from provider.sync import Belief, PassTimings, Synchronizer, now_ms
from provider.ucloud.devcore import DevCore, DevCoreKeys, job_body, send_verify
from provider.ucloud.models import JobState
from provider.web import make_app

HOUR_MS = 3_600_000


def make_store(path: Path, finished: dict[str, str], held: dict[str, str]) -> None:
    """The job map as the daemon left it: held jobs IN_QUEUE, finished ones last seen RUNNING."""
    store = Store(path)
    submitted = now_ms() - HOUR_MS
    for jobs, state in ((held, JobState.IN_QUEUE), (finished, JobState.RUNNING)):
        for ucloud_id, slurm_id in jobs.items():
            store.track(
                ucloud_id=ucloud_id, slurm_id=slurm_id, cluster="", expected_name=ucloud_id,
                submitted_at=submitted, now=submitted, state=state,
            )
    store.close()


def synchronizer(store: Store, backend: CommandBackend) -> Synchronizer:
    return Synchronizer(store, backend, StateTable(), DebounceRules(), PassTimings())


async def pass_costs(n: int, jobs: BenchJobs, repeat: int, work: Path) -> dict[str, float]:
    """Medians of ``repeat`` rounds; each round times every measurement once, in turn, so that the
    machine's drift (these machines are shared) touches the raw calls and the passes alike."""
    finished, held = jobs.take(n)
    template = work / f"template-{n}.sqlite3"
    make_store(template, finished, held)
    env = slurm_environment(os.environ["SLURM_CONF"])
    backend = CommandBackend(slurm_conf=os.environ["SLURM_CONF"], timeout=120)
    beliefs = {u: Belief(JobState.IN_QUEUE, now_ms() - HOUR_MS) for u in held} | {
        u: Belief(JobState.RUNNING, now_ms() - HOUR_MS) for u in finished
    }
    samples: dict[str, list[float]] = {}
    result: dict[str, float] = {}

    async def timed(label: str, run: Callable[[], Awaitable[object]]) -> None:
        started = time.perf_counter()
        await run()
        samples.setdefault(label, []).append((time.perf_counter() - started) * 1000)

    async def fresh_pass(label: str, pending: dict[str, Belief], include_active: bool, i: int) -> None:
        """A first pass over the map as the daemon left it, on a fresh copy of it."""
        path = work / f"{label}-{n}-{i}.sqlite3"
        shutil.copy(template, path)
        store = Store(path)
        sync = synchronizer(store, backend)
        before_calls, before_rows = sum(backend.calls.values()), store.rows_written
        await timed(label, lambda: sync.run_pass(pending, include_active))
        result[f"{label}_calls"] = sum(backend.calls.values()) - before_calls
        result[f"{label}_rows"] = store.rows_written - before_rows
        store.close()
        path.unlink()

    # Steady state: after one monitor pass the finished jobs are final; the held ones have not moved.
    # Its raw side is squeue alone (every active job is in it).
    path = work / f"steady-{n}.sqlite3"
    shutil.copy(template, path)
    steady_store = Store(path)
    steady = synchronizer(steady_store, backend)
    await steady.run_pass({}, True)
    steady_calls = steady_rows = 0
    for i in range(repeat):
        await timed("squeue", lambda: run_command(squeue_argv(), timeout=120, env=env))
        await timed("sacct", lambda: run_command(sacct_argv(sorted(finished.values())), timeout=120, env=env))
        await fresh_pass("verify", beliefs, False, i)
        await fresh_pass("monitor", {}, True, i)
        before_calls, before_rows = sum(backend.calls.values()), steady_store.rows_written
        await timed("steady", lambda: steady.run_pass({}, True))
        steady_calls += sum(backend.calls.values()) - before_calls
        steady_rows += steady_store.rows_written - before_rows
    steady_store.close()
    result["steady_calls"], result["steady_rows"] = steady_calls / repeat, steady_rows / repeat
    result.update({label: statistics.median(values) for label, values in samples.items()})
    return result


def settings(work: Path, keys: DevCoreKeys, core_url: str, port: int, store: Path) -> dict[str, object]:
    return {
        "provider": {"id": "slurm"},
        "server": {"host": "127.0.0.1", "port": port},
        "ucloud": {"url": core_url, "public_key_file": str(keys.public_key_file), "refresh_token_file": str(keys.refresh_token_file)},
        "slurm": {"backend": "cli", "conf": os.environ["SLURM_CONF"], "query_timeout": 120},
        "store": {"path": str(store)},
        "reconcile": {"interval": 3600},
        "accounting": {"enabled": False},
        "logging": {"level": "info", "format": "json"},
    }


SEED_JOB = Path(__file__).resolve().parent.parent / "tests" / "data" / "seed_verify_request.json"


def seed_job(ucloud_id: str, state: str) -> dict[str, Any]:
    """The Job of the seed's verify request (828 bytes of JSON) under another id and state."""
    job: dict[str, Any] = json.loads(SEED_JOB.read_text())["items"][0]
    job["id"], job["status"]["state"] = ucloud_id, state
    return job


def job_with_escaped_text(ucloud_id: str, state: str) -> dict[str, Any]:
    """Go Core's whole Job with a name as people write them: quotes, backslashes, a tab and newlines
    (eight backslashes in its JSON), a comma and brackets."""
    job = job_body(ucloud_id, state)
    job["specification"]["name"] = 'The "big" run\\n of C:\\data,\tday [1]\n'
    return job


async def verify_1024(jobs: BenchJobs, work: Path, make_job: Callable[[str, str], dict[str, Any]]) -> tuple[float, float]:
    """A verify of 1,024 finished jobs Core believes RUNNING: answer time, and time until Core has all."""
    finished, _ = jobs.take(2048)
    store_path = work / "verify-1024.sqlite3"
    make_store(store_path, finished, {})
    keys = DevCoreKeys.load_or_create(work / "keys")
    core = DevCore(keys, "slurm")
    core_runner = web.AppRunner(core.make_app())
    await core_runner.setup()
    core_site = web.TCPSite(core_runner, "127.0.0.1", 0)
    await core_site.start()
    core_url = f"http://127.0.0.1:{core_runner.addresses[0][1]}"
    app = make_app(settings_from_dict(settings(work, keys, core_url, _free_port(), store_path), source="bench"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    await asyncio.sleep(2)  # the start-up monitor pass is behind us
    gc.collect()
    gc.freeze()  # as serve does once it is ready (provider/daemon.py)
    core.requests.clear()  # the start-up pass's updates (``updates`` is a view of ``requests``)
    bodies = [make_job(u, "RUNNING") for u in finished]
    body_file = work / "verify-1024.json"
    body_file.write_bytes(json.dumps({"items": bodies}).encode())
    # Core sends from its own process, as it does in reality: the daemon's loop does none of Core's
    # work (encoding, sending), and Core's clock is the same monotonic clock as this process's.
    async def all_at_core() -> float:
        while len({u["id"] for u in core.updates}) < len(bodies):  # polling DevCore's list is the measurement
            await asyncio.sleep(0.005)
        return time.perf_counter()

    watching = asyncio.ensure_future(all_at_core())
    sender = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--send-verify", url, str(work / "keys"), str(body_file),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await sender.communicate()
    sent = json.loads(out)
    assert sent["status"] == 200, sent
    answered = (sent["answered"] - sent["started"]) * 1000
    delivered = (await watching - sent["started"]) * 1000
    await runner.cleanup()
    await core_runner.cleanup()
    return answered, delivered


async def send_verify_as_core(url: str, keys_dir: str, body_file: str) -> None:
    """Core's side of ``verify_1024``, in its own process: send the body, print when it went and when
    the answer came (``time.perf_counter``: the system's monotonic clock, shared with the bench)."""
    keys = DevCoreKeys.load_or_create(Path(keys_dir))
    raw = Path(body_file).read_bytes()
    async with ClientSession() as session:
        started = time.perf_counter()
        status, _ = await send_verify(session, url, "slurm", keys, raw)
        answered = time.perf_counter()
    print(json.dumps({"status": status, "started": started, "answered": answered}))


def daemon_memory(count: int, work: Path) -> float:
    """VmHWM in MB of the daemon process tracking ``count`` active jobs, after its first monitor pass.

    The jobs' Slurm ids are not in Slurm (a cluster cannot hold 100,000 jobs here), so the pass runs
    squeue and sacct for all of them and stores a miss for each: the heaviest first pass there is.
    """
    store_path = work / f"memory-{count}.sqlite3"
    store = Store(store_path)
    submitted = now_ms() - HOUR_MS
    with store._transaction() as db:  # bulk set-up: one transaction, not 100,000
        db.executemany(
            "INSERT INTO jobs (ucloud_id, slurm_id, cluster, expected_name, submitted_at, tracked_at, state, updated_at)"
            " VALUES (?, ?, '', ?, ?, ?, 'IN_QUEUE', ?)",
            ((str(70_000_000 + i), str(9_000_000 + i), str(70_000_000 + i), submitted, submitted, submitted) for i in range(count)),
        )
    store.close()
    keys = DevCoreKeys.load_or_create(work / "keys")
    config = work / f"memory-{count}.toml"
    conf = settings(work, keys, "http://127.0.0.1:9", 0, store_path)
    conf["server"] = {"host": "127.0.0.1", "port": _free_port()}
    config.write_text(_toml(conf))
    proc = subprocess.Popen(
        [sys.executable, "-m", "provider", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the first pass ends with its summary event
            if '"reconcile.pass"' in line:
                break
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(s for s in status.splitlines() if s.startswith("VmHWM")).split()[1]) / 1024
    finally:
        proc.terminate()
        proc.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(data: dict[str, object]) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():  # type: ignore[attr-defined]
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    if sys.argv[1:2] == ["--send-verify"]:  # verify_1024's stand-in Core, in its own process
        asyncio.run(send_verify_as_core(*sys.argv[2:5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1000,5000,10000", help="tracked job counts (half finished, half held)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory", default="10000,100000", help="active jobs the daemon tracks for the memory rows")
    parser.add_argument("--keep", action="store_true", help="leave the held jobs in Slurm for the next run")
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF"):
        print("set SLURM_CONF to a running cluster's slurm.conf", file=sys.stderr)
        return 2
    configure_logging("info", "json")
    counts = [int(x) for x in args.jobs.split(",") if x]
    jobs = ensure_jobs(max([*counts, 2048]) // 2 if counts else 1024, log=lambda m: print(m, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="pass-cost-"))
    try:
        print(
            f"{'N':>6} | {'squeue':>7} {'sacct':>7} {'raw':>7} | {'verify':>7} {'ratio':>5} {'rows':>6} | "
            f"{'monitor':>7} {'ratio':>5} {'rows':>6} | {'steady':>7} {'ratio':>5} {'rows':>4} | {'calls v/m/s':>11}"
        )
        for n in counts:
            r = asyncio.run(pass_costs(n, jobs, args.repeat, work))
            raw = r["squeue"] + r["sacct"]
            print(
                f"{n:>6} | {r['squeue']:>7.1f} {r['sacct']:>7.1f} {raw:>7.1f} | {r['verify']:>7.1f} {r['verify'] / raw:>5.2f} "
                f"{r['verify_rows']:>6.0f} | {r['monitor']:>7.1f} {r['monitor'] / raw:>5.2f} {r['monitor_rows']:>6.0f} | "
                f"{r['steady']:>7.1f} {r['steady'] / r['squeue']:>5.2f} {r['steady_rows']:>4.0f} | "
                f"{r['verify_calls']:.0f}/{r['monitor_calls']:.0f}/{r['steady_calls']:.0f}"
            )
        print("(ms, medians; ratio = pass / raw squeue+sacct; a steady pass needs squeue only, so its ratio is to squeue)")
        shapes = (
            ("Go Core's whole Jobs, 7.5 MB", "go-jobs", job_body),
            ("the same with text to escape", "escaped-jobs", job_with_escaped_text),
            ("the seed's Job, 0.85 MB", "seed-jobs", seed_job),
        )
        for shape, folder, make_job in shapes:
            answered, delivered = asyncio.run(verify_1024(jobs, work / folder, make_job))
            print(f"verify of 1,024 jobs ({shape}): answered in {answered:.0f} ms, every update at Core after {delivered:.0f} ms")
        for count in (int(x) for x in args.memory.split(",") if x):
            print(f"daemon tracking {count:,} active jobs: VmHWM {daemon_memory(count, work):.0f} MB after its first monitor pass")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            cancel_held(jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
