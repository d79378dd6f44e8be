"""What one accounting pass costs over N finished jobs, next to the raw sacct it runs, in the same run.

    SLURM_CONF=/tmp/ucloud-slurm-local/etc/slurm.conf .venv/bin/python bench/usage_pass.py --name bench-usage

It takes the N most recent finished jobs named ``--name`` from Slurm's accounting (make them with
``sbatch --array=0-999 --job-name=bench-usage -o /dev/null --wrap true``, ten times for 10,000), tracks
them as the daemon would (job map plus whom each charges: 10 users, 2 categories), and times: the raw
sacct with the daemon's exact arguments, the first pass (query, parse, rules, storing every job's
usage and the totals, queuing the reports), and a second pass (nothing open: no Slurm call at all).
Compare ratios, not absolute times: the machines are shared and noisy.
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

from provider.accounting import Owner, UsageSubject
from provider.config import ProductSection
from provider.logs import configure_logging
from provider.slurm.commands import CommandBackend, sacct_usage_args
from provider.slurm.process import run_command, slurm_environment
from provider.store import Store
from provider.sync import now_ms
from provider.ucloud.models import JobState
from provider.usage import UsageMeter

PRODUCTS = [
    ProductSection(id="cpu-1", category="cpu", cpus=1),
    ProductSection(id="cash-1", category="cash", accounting_unit="money", price=0.35, currency="DKK", accounting_frequency="hour"),
]


async def finished_ids(env: dict[str, str], name: str, n: int) -> list[str]:
    argv = ["sacct", "-n", "-P", "-X", "-a", "-S", "2020-01-01", f"--name={name}", "-o", "JobIDRaw,State"]
    result = await run_command(argv, timeout=120, env=env)
    rows = [line.split("|") for line in result.stdout.splitlines()]
    ids = [row[0] for row in rows if len(row) == 2 and row[0].isdigit() and row[1] == "COMPLETED"]
    return ids[-n:]


async def measure(ids: list[str], name: str, repeat: int) -> dict[str, float]:
    env = slurm_environment(os.environ.get("SLURM_CONF"))
    raw = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = await run_command(["sacct", *sacct_usage_args(ids)], timeout=120, env=env)
        raw.append((time.perf_counter() - started) * 1000)
        assert result.ok, result.describe()
    first, second, calls = [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "bench.sqlite3")
            now = now_ms()
            for i, slurm_id in enumerate(ids):
                product = PRODUCTS[i % 2]
                store.track(
                    ucloud_id=f"b{i}", slurm_id=slurm_id, cluster="", expected_name=name, submitted_at=now, now=now,
                    state=JobState.SUCCESS, charges=UsageSubject(Owner("user", f"user{(i // 2) % 10}"), product.category, product.id),
                )
            backend = CommandBackend(slurm_conf=os.environ.get("SLURM_CONF"), timeout=120)
            meter = UsageMeter(store, backend, lambda: PRODUCTS, give_up_ms=86_400_000, clock=now_ms)
            started = time.perf_counter()
            report = await meter.run_pass()
            first.append((time.perf_counter() - started) * 1000)
            assert not report.error and report.changed == len(ids), report
            assert store.usage_stats().open_jobs == 0 and store.usage_stats().pending == 20
            started = time.perf_counter()
            await meter.run_pass()
            second.append((time.perf_counter() - started) * 1000)
            calls.append(backend.calls["sacct_usage"])
            store.close()
    return {
        "raw_sacct": statistics.median(raw),
        "first": statistics.median(first),
        "second": statistics.median(second),
        "calls": statistics.median(calls),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="finished jobs to account for")
    parser.add_argument("--name", default="bench-usage", help="the job name of the finished jobs to use")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    configure_logging("warning", "json")
    if not os.environ.get("SLURM_CONF"):
        print("set SLURM_CONF to a running cluster's slurm.conf", file=sys.stderr)
        return 2
    ids = asyncio.run(finished_ids(slurm_environment(os.environ["SLURM_CONF"]), args.name, args.jobs))
    if len(ids) < args.jobs:
        print(f"only {len(ids)} finished jobs named {args.name!r}; submit more (see the docstring)", file=sys.stderr)
        return 2
    r = asyncio.run(measure(ids, args.name, args.repeat))
    print(f"{'jobs':>6} {'sacct ms':>9} {'pass ms':>8} {'pass/sacct':>11} {'sacct calls':>12} {'next pass ms':>13} {'peak RSS MB':>12}")
    print(
        f"{len(ids):>6} {r['raw_sacct']:>9.1f} {r['first']:>8.1f} {r['first'] / r['raw_sacct']:>11.2f} "
        f"{r['calls']:>12.0f} {r['second']:>13.1f} {r['rss_mb']:>12.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
