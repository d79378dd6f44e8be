"""What one reconciliation pass costs, next to the raw Slurm calls it makes, measured in the same run.

    SLURM_CONF=/tmp/ucloud-slurm-local/etc/slurm.conf .venv/bin/python bench/pass_cost.py [--jobs 100,1000,5000]

For N tracked jobs (ids Slurm does not know, so every pass runs one squeue and one sacct for all N)
it times: the raw squeue and sacct calls with the daemon's exact arguments, a whole pass (query,
parse, decide, store), and the daemon's peak memory. Compare the ratios, not the absolute times:
these machines are shared and noisy. Needs a running Slurm (deploy/local-slurm/start.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provider.logs import configure_logging
from provider.reconcile import DebounceRules
from provider.slurm.commands import CommandBackend, sacct_argv, squeue_argv
from provider.slurm.process import run_command, slurm_environment
from provider.states import StateTable
from provider.store import Store
from provider.sync import Belief, Synchronizer, now_ms


async def timed(coro_factory, repeat: int) -> float:  # type: ignore[no-untyped-def]
    """Median wall time of ``repeat`` runs, in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await coro_factory()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def measure(n: int, repeat: int) -> dict[str, float]:
    env = slurm_environment(os.environ.get("SLURM_CONF"))
    ids = [str(9_000_000 + i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.sqlite3")
        now = now_ms()
        for i, slurm_id in enumerate(ids):
            store.track(ucloud_id=f"b{i}", slurm_id=slurm_id, cluster="", expected_name=f"b{i}", submitted_at=now, now=now)
        backend = CommandBackend(slurm_conf=os.environ.get("SLURM_CONF"), timeout=60)
        sync = Synchronizer(store, backend, StateTable(), DebounceRules(checks=10**6))
        beliefs = {f"b{i}": Belief() for i in range(n)}
        raw_squeue = await timed(lambda: run_command(squeue_argv(), timeout=60, env=env), repeat)
        raw_sacct = await timed(lambda: run_command(sacct_argv(ids), timeout=60, env=env), repeat)
        calls_before = sum(backend.calls.values())
        whole_pass = await timed(lambda: sync.run_pass(beliefs), repeat)
        calls = (sum(backend.calls.values()) - calls_before) / repeat
        store.close()
    return {
        "raw_squeue": raw_squeue,
        "raw_sacct": raw_sacct,
        "pass": whole_pass,
        "calls": calls,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="100,1000,5000", help="tracked job counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    configure_logging("info", "json")  # the daemon's default level: per-job debug events are not rendered
    if not os.environ.get("SLURM_CONF"):
        print("set SLURM_CONF to a running cluster's slurm.conf", file=sys.stderr)
        return 2
    print(f"{'jobs':>6} {'squeue ms':>10} {'sacct ms':>9} {'raw sum':>8} {'pass ms':>8} {'pass/raw':>9} {'Slurm calls':>12} {'peak RSS MB':>12}")
    for n in (int(x) for x in args.jobs.split(",")):
        r = asyncio.run(measure(n, args.repeat))
        raw = r["raw_squeue"] + r["raw_sacct"]
        print(
            f"{n:>6} {r['raw_squeue']:>10.1f} {r['raw_sacct']:>9.1f} {raw:>8.1f} {r['pass']:>8.1f} "
            f"{r['pass'] / raw:>9.2f} {r['calls']:>12.0f} {r['rss_mb']:>12.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
