"""Real jobs for the benchmarks: finished ones that only sacct lists, and held ones that squeue lists.

Each job is named with its UCloud id, as the daemon names the jobs it submits. The ids and Slurm ids
are kept in a manifest beside the cluster's configuration, so a later run reuses the jobs (held jobs
stay; finished ones stay in accounting) instead of submitting thousands again.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

FINISHED_BASE = 81_000_000  # UCloud ids of finished jobs: 81000000, 81000001, ...
HELD_BASE = 82_000_000  # UCloud ids of held (PENDING) jobs


@dataclass
class BenchJobs:
    finished: dict[str, str]  # UCloud id -> Slurm id
    held: dict[str, str]

    def take(self, n: int) -> tuple[dict[str, str], dict[str, str]]:
        """Half finished, half held: the first n/2 of each."""
        half = n // 2
        return dict(list(self.finished.items())[:half]), dict(list(self.held.items())[: n - half])


def _sbatch(args: list[str]) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


def _submit(ucloud_ids: list[str], extra: list[str], workers: int = 8) -> dict[str, str]:
    def one(ucloud_id: str) -> tuple[str, str]:
        args = [f"--job-name={ucloud_id}", "--comment=UCloud job", "--output=/dev/null", *extra, "--wrap=true"]
        return ucloud_id, _sbatch(args)

    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, ucloud_ids))


def _in_squeue(states: str = "all") -> set[str]:
    out = subprocess.run(["squeue", "-h", "-t", states, "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def ensure_jobs(count: int, log: callable = print) -> BenchJobs:  # type: ignore[valid-type]
    """At least ``count`` finished and ``count`` held jobs, submitted now or found in the manifest."""
    manifest = Path(os.environ["SLURM_CONF"]).parent / "bench-jobs.json"
    jobs = BenchJobs({}, {})
    if manifest.exists():
        data = json.loads(manifest.read_text())
        jobs = BenchJobs(data["finished"], data["held"])
        # A wiped cluster lost them; a restarted one lists them CANCELLED (or whatever ended them) until
        # MinJobAge passes: only a job still pending is still a held bench job.
        pending = _in_squeue("PENDING")
        jobs.held = {u: s for u, s in jobs.held.items() if s in pending}
    missing_finished = [str(FINISHED_BASE + i) for i in range(count) if str(FINISHED_BASE + i) not in jobs.finished]
    if missing_finished:
        started = time.monotonic()
        log(f"submitting {len(missing_finished)} jobs that finish at once ...")
        jobs.finished.update(_submit(missing_finished, []))
        _save(manifest, jobs)  # a later failure (MaxJobCount) must not lose what is in Slurm already
        while _in_squeue() & set(jobs.finished.values()):  # MinJobAge: then only sacct lists them
            time.sleep(5)
        log(f"  done in {time.monotonic() - started:.0f} s")
    missing_held = [str(HELD_BASE + i) for i in range(count) if str(HELD_BASE + i) not in jobs.held]
    if missing_held:
        started = time.monotonic()
        log(f"submitting {len(missing_held)} held jobs ...")
        jobs.held.update(_submit(missing_held, ["--hold"]))
        log(f"  done in {time.monotonic() - started:.0f} s")
    _save(manifest, jobs)
    return jobs


def _save(manifest: Path, jobs: BenchJobs) -> None:
    manifest.write_text(json.dumps({"finished": jobs.finished, "held": jobs.held}))


def cancel_held(jobs: BenchJobs) -> None:
    ids = list(jobs.held.values())
    for start in range(0, len(ids), 1000):
        subprocess.run(["scancel", *ids[start : start + 1000]], capture_output=True, check=False)
