"""Verify against a real Slurm: jobs really submitted, Core told each job's true state, nothing on failure."""

from __future__ import annotations

import asyncio
import time

import pytest

from helpers import HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.slurm.types import FINISHED_BASE_STATES
from provider.ucloud.devcore import job_body
from provider.ucloud.models import NO_LONGER_AVAILABLE, JobState

pytestmark = pytest.mark.slurm

FINISHED = FINISHED_BASE_STATES


@pytest.mark.slow
async def test_verify_reports_the_true_state_of_each_real_job(slurm: LocalSlurm, make_harness: HarnessFactory) -> None:
    """Running (Core: IN_QUEUE) -> RUNNING; exit 0 -> SUCCESS; exit 1 -> FAILURE; past its time limit ->
    EXPIRED; cancelled -> SUCCESS. One verify of all of them."""
    ids = {kind: new_ucloud_id() for kind in ("running", "exit0", "exit1", "timeout", "cancelled")}
    slurm_ids = {
        "running": slurm.sbatch("sleep 600", name=ids["running"]),
        "exit0": slurm.sbatch("exit 0", name=ids["exit0"]),
        "exit1": slurm.sbatch("exit 1", name=ids["exit1"]),
        "timeout": slurm.sbatch("sleep 600", name=ids["timeout"], time_limit="1"),
        "cancelled": slurm.sbatch("sleep 600", name=ids["cancelled"]),
    }
    slurm.wait_state(slurm_ids["cancelled"], {"RUNNING"}, 60)
    slurm.run("scancel", slurm_ids["cancelled"])
    slurm.wait_state(slurm_ids["running"], {"RUNNING"}, 60)
    for kind in ("exit0", "exit1", "cancelled"):
        slurm.wait_state(slurm_ids[kind], FINISHED, 60)
    slurm.wait_state(slurm_ids["timeout"], {"TIMEOUT"}, 240)  # Slurm enforces limits in whole minutes

    h = await make_harness()
    for kind, ucloud_id in ids.items():
        h.track(ucloud_id, slurm_ids[kind])
    believed = {"running": "IN_QUEUE"}
    resp = await h.verify([job_body(ucloud_id, believed.get(kind, "RUNNING")) for kind, ucloud_id in ids.items()])
    assert resp.status == 200 and await resp.json() == {}

    got = {kind: (await h.updates_for(ucloud_id))[0] for kind, ucloud_id in ids.items()}
    assert {kind: u["state"] for kind, u in got.items()} == {
        "running": "RUNNING",
        "exit0": "SUCCESS",
        "exit1": "FAILURE",
        "timeout": "EXPIRED",
        "cancelled": "SUCCESS",
    }
    assert got["running"]["expectedState"] == "IN_QUEUE"
    assert "exit code 1" in got["exit1"]["status"]
    assert got["cancelled"]["status"].startswith("Your job was cancelled")
    assert h.backend.calls["squeue"] == 1 and h.backend.calls["sacct"] <= 1


async def test_a_job_core_already_sees_right_gets_no_update(slurm: LocalSlurm, make_harness: HarnessFactory) -> None:
    ucloud_id = new_ucloud_id()
    slurm_id = slurm.sbatch("sleep 600", name=ucloud_id)
    slurm.wait_state(slurm_id, {"RUNNING"}, 60)
    h = await make_harness()
    h.track(ucloud_id, slurm_id, state=JobState.RUNNING)
    assert (await h.verify([job_body(ucloud_id, "RUNNING")])).status == 200
    await wait_for(lambda: h.sync.passes >= 2, 30)  # the monitor's start-up pass and the verify's
    await h.settled()
    assert h.core.updates_for(ucloud_id) == []
    slurm.run("scancel", slurm_id)


async def test_finished_job_purged_from_slurmctld_is_found_in_accounting(
    slurm: LocalSlurm, make_harness: HarnessFactory
) -> None:
    if slurm.min_job_age > 60:
        pytest.skip(f"MinJobAge is {slurm.min_job_age} s on this cluster; the test waits for a purge (needs <= 60)")
    ucloud_id = new_ucloud_id()
    slurm_id = slurm.sbatch("exit 3", name=ucloud_id)
    deadline = time.monotonic() + slurm.min_job_age + 90
    while slurm.run("squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T", check=False).stdout.strip():
        assert time.monotonic() < deadline, "slurmctld never purged the finished job"
        await asyncio.sleep(2)
    h = await make_harness()
    h.track(ucloud_id, slurm_id)
    await h.verify([job_body(ucloud_id, "RUNNING")])
    (update,) = await h.updates_for(ucloud_id)
    assert update["state"] == "FAILURE" and "exit code 3" in update["status"]
    assert h.backend.calls["sacct"] == 1


async def test_a_tracked_slurm_id_that_never_existed_fails_after_the_debounce(
    slurm: LocalSlurm, make_harness: HarnessFactory
) -> None:
    h = await make_harness(missing_checks=3, missing_window=2, confirm_interval=1)
    ucloud_id = new_ucloud_id()
    h.track(ucloud_id, "987654")
    await h.verify([job_body(ucloud_id, "RUNNING")])
    await wait_for(lambda: h.sync.passes >= 2, 30)
    assert h.core.updates_for(ucloud_id) == []  # one miss is not evidence
    (update,) = await h.updates_for(ucloud_id, timeout=60)  # confirmed by the daemon's own re-checks
    assert (update["state"], update["status"], update["expectedState"]) == ("FAILURE", NO_LONGER_AVAILABLE, None)
    assert h.sync.passes >= 4  # first check + at least two confirming checks, no further verify needed
    assert h.store.get([ucloud_id])[ucloud_id].miss_count >= 3


async def test_a_reused_slurm_id_running_someone_elses_job_is_not_ours(
    slurm: LocalSlurm, make_harness: HarnessFactory
) -> None:
    """Ids wrap and a wiped slurmctld starts again at 1: a job with another name is not our job."""
    slurm_id = slurm.sbatch("sleep 600", name="somebody-else")
    slurm.wait_state(slurm_id, {"RUNNING"}, 60)
    h = await make_harness(missing_checks=2, missing_window=1, confirm_interval=1)
    ucloud_id = new_ucloud_id()
    h.track(ucloud_id, slurm_id)  # we expect the name to be our UCloud id
    await h.verify([job_body(ucloud_id, "RUNNING")])
    (update,) = await h.updates_for(ucloud_id, timeout=60)
    assert (update["state"], update["status"]) == ("FAILURE", NO_LONGER_AVAILABLE)
    assert slurm.state(slurm_id) == "RUNNING"  # and the other job is left alone
    slurm.run("scancel", slurm_id)


async def test_with_slurmctld_stopped_verify_sends_no_update(slurm: LocalSlurm, make_harness: HarnessFactory) -> None:
    running = new_ucloud_id()
    running_slurm_id = slurm.sbatch("sleep 600", name=running)
    slurm.wait_state(running_slurm_id, {"RUNNING"}, 60)
    never = new_ucloud_id()
    h = await make_harness(missing_checks=1, missing_window=0, confirm_interval=1)
    h.track(running, running_slurm_id)
    h.track(never, "987655")  # would be failed at once if a failed query counted as "gone"
    slurm.ctl("slurmctld", "stop")
    try:
        await h.verify([job_body(running, "IN_QUEUE"), job_body(never, "RUNNING")])
        passes = h.sync.passes
        await wait_for(lambda: h.sync.passes >= passes + 2, 120)  # the verify's pass and a re-check
        health = time.monotonic()
        assert (await h.client.get("/healthz")).status == 200
        assert time.monotonic() - health < 1
        await h.settled()
        assert h.core.updates == []
        assert h.sync.last_report is not None and h.sync.last_report.live_ok is False
    finally:
        slurm.ctl("slurmctld", "start")
    slurm.run("scancel", running_slurm_id)


async def test_1000_tracked_jobs_cost_one_squeue_and_one_sacct(slurm: LocalSlurm, make_harness: HarnessFactory) -> None:
    h = await make_harness(confirm_interval=600)  # no confirming re-check inside the measurement
    real = new_ucloud_id()
    real_slurm_id = slurm.sbatch("sleep 600", name=real)
    slurm.wait_state(real_slurm_id, {"RUNNING"}, 60)
    h.track(real, real_slurm_id)
    ucloud_ids = [real]
    for n in range(999):
        ucloud_id = new_ucloud_id()
        h.track(ucloud_id, str(5_000_000 + n))
        ucloud_ids.append(ucloud_id)
    await wait_for(lambda: h.sync.passes >= 1, 30)  # the monitor's start-up pass
    before = dict(h.backend.calls)
    await h.verify([job_body(u, "IN_QUEUE") for u in ucloud_ids])
    await wait_for(lambda: len(h.core.updates_for(real)) == 1, 60)
    assert h.backend.calls["squeue"] - before.get("squeue", 0) == 1
    assert h.backend.calls["sacct"] - before.get("sacct", 0) == 1
    assert h.core.updates_for(real)[0]["state"] == "RUNNING"
    slurm.run("scancel", real_slurm_id)


async def test_with_slurmdbd_stopped_a_job_absent_from_squeue_is_not_failed(
    slurm: LocalSlurm, make_harness: HarnessFactory
) -> None:
    """squeue works but sacct cannot answer: the job may have finished, or may never have existed.
    Without accounting's answer nothing is decided."""
    h = await make_harness(missing_checks=1, missing_window=0, confirm_interval=1)
    ucloud_id = new_ucloud_id()
    h.track(ucloud_id, "987656", state=JobState.RUNNING)
    slurm.ctl("slurmdbd", "stop")
    try:
        await h.verify([job_body(ucloud_id, "RUNNING")])
        passes = h.sync.passes
        await wait_for(lambda: h.sync.passes >= passes + 3, 60)
        await h.settled()
        assert h.core.updates == []
        assert h.sync.last_report is not None and h.sync.last_report.history_ok is False
    finally:
        slurm.ctl("slurmdbd", "start")
    (update,) = await h.updates_for(ucloud_id, timeout=60)  # once accounting answers, the verdict comes
    assert update["status"] == NO_LONGER_AVAILABLE
