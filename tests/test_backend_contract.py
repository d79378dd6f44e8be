"""One contract for every Slurm backend, run against a real Slurm for each backend usable on the machine.

The command backend always runs. The pyslurm backend runs where a pyslurm built for this cluster's
Slurm imports in its worker (PYSLURM_PYTHON names another interpreter to run the worker with);
elsewhere its tests are skipped with the reason in the summary.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from helpers import HarnessFactory, LocalSlurm, new_ucloud_id
from provider.slurm.backend import SlurmBackend
from provider.slurm.commands import CommandBackend
from provider.slurm.pyslurm_backend import PyslurmBackend, WorkerUnavailable
from provider.slurm.select import major_minor
from provider.slurm.types import FINISHED_BASE_STATES
from provider.ucloud.models import JobState

pytestmark = pytest.mark.slurm

FINISHED = FINISHED_BASE_STATES


@pytest.fixture(scope="module")
def jobs(slurm: LocalSlurm) -> Iterator[dict[str, str]]:
    """One real job in each situation, submitted once for every backend's checks."""
    ids = {
        "running": slurm.sbatch("sleep 600", name="contract-running"),
        "completed": slurm.sbatch("exit 0", name="contract-completed"),
        "failed": slurm.sbatch("exit 3", name="contract-failed"),
        "cancelled": slurm.sbatch("sleep 600", name="contract-cancelled"),
        "timeout": slurm.sbatch("sleep 600", name="contract-timeout", time_limit="1"),
    }
    slurm.wait_state(ids["cancelled"], {"RUNNING"}, 60)
    slurm.run("scancel", ids["cancelled"])
    slurm.wait_state(ids["running"], {"RUNNING"}, 60)
    for kind in ("completed", "failed", "cancelled"):
        slurm.wait_state(ids[kind], FINISHED, 60)
    deadline = time.monotonic() + 30  # accounting lags slurmctld by a few seconds
    while time.monotonic() < deadline:
        out = slurm.run("sacct", "-n", "-X", "-P", "-j", ids["completed"], "-o", "State", check=False).stdout
        if "COMPLETED" in out:
            break
        time.sleep(0.5)
    yield ids
    slurm.run("scancel", ids["running"], ids["timeout"], check=False)


@pytest.fixture(params=["cli", "pyslurm"])
async def backend(request: pytest.FixtureRequest, slurm: LocalSlurm) -> AsyncIterator[SlurmBackend]:
    if request.param == "cli":
        yield CommandBackend(slurm_conf=slurm.conf, timeout=20)
        return
    worker = PyslurmBackend(python=os.environ.get("PYSLURM_PYTHON", ""), slurm_conf=slurm.conf, timeout=20)
    try:
        probe = await worker.start()
    except WorkerUnavailable as exc:
        pytest.skip(f"pyslurm is not usable here: {exc} (PyPI has pyslurm for Slurm 25.11 only)")
    if major_minor(probe.get("built_for")) != major_minor(probe.get("controller")):
        await worker.close()
        pytest.skip(f"pyslurm is built for Slurm {probe.get('built_for')}, the cluster runs {probe.get('controller')}")
    yield worker
    await worker.close()


def finished_now(slurm: LocalSlurm, script: str, name: str, extra: tuple[str, ...] = ()) -> str:
    """A job that has just ended, so slurmctld still holds it (MinJobAge may be short on test clusters)."""
    slurm_id = slurm.sbatch(script, name=name, extra=extra)
    slurm.wait_state(slurm_id, FINISHED, 60)
    return slurm_id


async def test_live_jobs_include_running_and_just_finished(
    backend: SlurmBackend, jobs: dict[str, str], slurm: LocalSlurm
) -> None:
    completed = finished_now(slurm, "exit 0", "contract-live-completed")
    live = await backend.live_jobs()
    assert live.ok, live.error
    running = live.jobs[jobs["running"]]
    assert (running.state.base, running.name) == ("RUNNING", "contract-running")
    assert live.jobs[completed].state.base == "COMPLETED"


async def test_history_has_the_final_state_and_exit_code(backend: SlurmBackend, jobs: dict[str, str]) -> None:
    history = await backend.finished_jobs([jobs["completed"], jobs["failed"], jobs["cancelled"]])
    assert history.ok, history.error
    assert history.jobs[jobs["completed"]].state.base == "COMPLETED"
    failed = history.jobs[jobs["failed"]]
    assert failed.state.base == "FAILED" and failed.exit_status is not None and failed.exit_status.code == 3
    assert history.jobs[jobs["cancelled"]].state.base == "CANCELLED"


async def test_failed_job_in_slurmctld_carries_its_exit_code(backend: SlurmBackend, slurm: LocalSlurm) -> None:
    slurm_id = finished_now(slurm, "exit 3", "contract-live-failed")
    failed = (await backend.live_jobs()).jobs[slurm_id]
    assert failed.state.base == "FAILED" and failed.exit_status is not None and failed.exit_status.code == 3


async def test_array_tasks_answer_to_their_display_ids(backend: SlurmBackend, slurm: LocalSlurm) -> None:
    array = finished_now(slurm, "exit 0", "contract-array", extra=("--array=0-2",))  # every task ended
    for _ in range(20):  # accounting hears of them a moment later
        if len((await backend.finished_jobs([array])).jobs) >= 3:
            break
        await asyncio.sleep(0.5)
    for result in (await backend.live_jobs(), await backend.finished_jobs([array])):
        assert result.ok
        assert {f"{array}_{t}" for t in range(3)} <= set(result.jobs)
        assert {result.jobs[f"{array}_{t}"].name for t in range(3)} == {"contract-array"}
    # A tracked array task is asked for by its display id (``jobs track 123_1``): history must find it.
    task = (await backend.finished_jobs([f"{array}_1"])).jobs.get(f"{array}_1")
    assert task is not None and task.state.base == "COMPLETED" and task.name == "contract-array"


async def test_unknown_ids_are_absent_from_both_answers(backend: SlurmBackend) -> None:
    live, history = await backend.live_jobs(), await backend.finished_jobs(["987601", "987602"])
    assert live.ok and history.ok
    assert "987601" not in live.jobs and history.jobs == {}


@pytest.mark.slow
async def test_a_job_past_its_time_limit_is_timeout(backend: SlurmBackend, jobs: dict[str, str], slurm: LocalSlurm) -> None:
    slurm.wait_state(jobs["timeout"], {"TIMEOUT"}, 240)
    history = await backend.finished_jobs([jobs["timeout"]])
    assert history.ok and history.jobs[jobs["timeout"]].state.base == "TIMEOUT"


async def test_stopped_slurmdbd_fails_history_but_not_live(backend: SlurmBackend, slurm: LocalSlurm, jobs: dict[str, str]) -> None:
    slurm.ctl("slurmdbd", "stop")
    try:
        history = await backend.finished_jobs([jobs["completed"]])
        live = await backend.live_jobs()
    finally:
        slurm.ctl("slurmdbd", "start")
    assert not history.ok and history.jobs == {} and history.error
    assert live.ok


async def test_stopped_slurmctld_is_unknown_and_the_daemon_keeps_answering(
    backend: SlurmBackend, slurm: LocalSlurm, make_harness: HarnessFactory
) -> None:
    """While the backend waits out slurmctld's absence (about 10 s), /healthz answers within 100 ms."""
    h = await make_harness(backend=backend, interval=3600)
    h.track(new_ucloud_id(), "987603", state=JobState.RUNNING)
    slurm.ctl("slurmctld", "stop")
    try:
        passes = h.sync.passes
        h.sync.request_active()
        started = time.monotonic()
        latencies = []
        while h.sync.passes == passes and time.monotonic() - started < 60:
            t0 = time.monotonic()
            assert (await h.client.get("/healthz")).status == 200
            latencies.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)
        waited = time.monotonic() - started
    finally:
        slurm.ctl("slurmctld", "start")
    report = h.sync.last_report
    assert report is not None and report.live_ok is False and h.core.updates == []
    assert waited > 2, "the query failed at once: the outage was not waited out"
    assert len(latencies) > 20 and max(latencies) < 0.1, f"max /healthz latency {max(latencies):.3f} s"
    print(f"\n{backend.name}: slurmctld down: query failed after {waited:.1f} s; "
          f"/healthz answered {len(latencies)} times, max {max(latencies) * 1000:.1f} ms")
