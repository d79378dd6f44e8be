"""A complete provider against a real Slurm: create, terminate, extend, and the daemon's own monitor.

Driven over HTTP with tokens signed as Core signs; the stand-in Core sees each job's whole life with no
verify call at all.
"""

from __future__ import annotations

import asyncio
import pwd
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import PROVIDER_ID, SHARED_TMP, Harness, HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.ucloud.devcore import job_body

pytestmark = pytest.mark.slurm

SCRIPT = """#!/bin/bash
printf '%s' "$UCLOUD_PARAM_VALUE" > value.txt
sleep "${UCLOUD_PARAM_SECONDS:-0}"
exit "${UCLOUD_PARAM_EXIT:-0}"
"""


@pytest.fixture
def app_script(tmp_path: Path) -> Path:
    script = tmp_path / "apps" / "acme-batch.sh"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    return script


def provider_sections(app_script: Path, tmp_path: Path, **jobs: Any) -> dict[str, Any]:
    return {
        "jobs": {"directory": str(tmp_path / "jobs"), "output_folder": "/ucloud-jobs/{job_id}", **jobs},
        "products": [
            {"id": "cpu-1", "category": "cpu", "partition": "normal", "account": "ucloud", "cpus": 1,
             "memory_mb": 100, "max_nodes": 1, "max_time_minutes": 60},
            {"id": "short-1", "category": "cpu", "partition": "short", "max_time_minutes": 60},
        ],
        "applications": [
            {"name": "acme-batch", "version": "*", "script": str(app_script),
             "parameters": {"value": {"type": "text", "optional": True},
                            "seconds": {"type": "integer", "optional": True},
                            "exit": {"type": "integer", "optional": True}}},
        ],
    }


@pytest.fixture
async def provider(
    slurm: LocalSlurm, make_harness: HarnessFactory, app_script: Path, tmp_path: Path
) -> Harness:
    """The daemon with products and an application, its monitor checking every second."""
    return await make_harness(sections=provider_sections(app_script, tmp_path), interval=1, max_interval=2)


def new_job(**params: object) -> dict[str, Any]:
    parameters = {}
    for name, value in params.items():
        kind = "integer" if isinstance(value, int) else "text"
        parameters[name] = {"type": kind, "value": value}
    return job_body(
        new_ucloud_id(), "IN_QUEUE", product=("cpu-1", "cpu"), parameters=parameters, time_allocation=(0, 5, 0),
        created_at=int(time.time() * 1000),
    )


async def create(h: Harness, job: dict[str, Any]) -> str:
    status, answer = await h.call("jobs", {"items": [job]})
    assert status == 200, answer
    (response,) = answer["responses"]
    slurm_id = response["id"].split("/")[1]
    assert slurm_id.isdigit()
    return slurm_id


def states(h: Harness, ucloud_id: str) -> list[str]:
    return [u["state"] for u in h.core.updates_for(ucloud_id) if u["state"] is not None]


async def wait_core_state(h: Harness, ucloud_id: str, state: str, timeout: float = 120) -> None:
    await wait_for(lambda: h.core.jobs.get(ucloud_id) == state, timeout, interval=0.2)


def scontrol_job(slurm: LocalSlurm, slurm_id: str) -> dict[str, str]:
    out = slurm.run("scontrol", "show", "job", "-o", slurm_id).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


async def test_create_runs_a_real_job_and_core_sees_its_whole_life_without_verify(
    provider: Harness, slurm: LocalSlurm
) -> None:
    h = provider
    job = new_job(seconds=3)
    h.core.register(job["id"])
    started = time.monotonic()
    slurm_id = await create(h, job)
    assert time.monotonic() - started < 5
    slurm.submitted.append(slurm_id)

    info = scontrol_job(slurm, slurm_id)
    assert info["JobName"] == job["id"] and info["Partition"] == "normal" and info["Account"] == "ucloud"
    assert info["NumCPUs"] == "1" and info["MinMemoryNode"] == "100M" and info["TimeLimit"] == "00:05:00"
    assert "Comment=UCloud job " in slurm.run("scontrol", "show", "job", "-o", slurm_id).stdout

    await wait_core_state(h, job["id"], "SUCCESS")
    first = h.core.updates_for(job["id"])[0]
    assert first["status"] == f"Your job has been submitted to the queue (Slurm ID: {slurm_id})"
    assert first["outputFolder"] == f"/ucloud-jobs/{job['id']}"
    assert states(h, job["id"]) == ["RUNNING", "SUCCESS"]
    assert h.core.updates_for(job["id"])[1]["expectedState"] == "IN_QUEUE"


async def test_a_script_that_exits_2_ends_failure(provider: Harness, slurm: LocalSlurm) -> None:
    job = new_job(exit=2)
    slurm.submitted.append(await create(provider, job))
    await wait_core_state(provider, job["id"], "FAILURE")
    assert "exit code 2" in provider.core.updates_for(job["id"])[-1]["status"]


@pytest.mark.slow
async def test_a_job_that_outlives_its_time_ends_expired(provider: Harness, slurm: LocalSlurm) -> None:
    job = new_job(seconds=600)
    job["specification"]["timeAllocation"] = {"hours": 0, "minutes": 1, "seconds": 0}
    slurm.submitted.append(await create(provider, job))
    await wait_core_state(provider, job["id"], "EXPIRED", timeout=240)
    assert states(provider, job["id"]) == ["RUNNING", "EXPIRED"]


async def test_terminate_ends_success_and_the_slurm_job_is_gone(provider: Harness, slurm: LocalSlurm) -> None:
    job = new_job(seconds=600)
    slurm_id = await create(provider, job)
    slurm.submitted.append(slurm_id)
    await wait_core_state(provider, job["id"], "RUNNING")
    status, answer = await provider.call("jobs/terminate", {"items": [job]})
    assert (status, answer) == (200, {"responses": [{}]})
    await wait_core_state(provider, job["id"], "SUCCESS", timeout=60)
    assert slurm.state(slurm_id) == "CANCELLED"
    assert provider.core.updates_for(job["id"])[-1]["status"].startswith("Your job was cancelled")


async def test_terminate_of_unknown_or_finished_jobs_is_a_success(provider: Harness) -> None:
    status, answer = await provider.call("jobs/terminate", {"items": [job_body("1"), job_body("2")]})
    assert (status, answer) == (200, {"responses": [{}, {}]})


async def test_terminate_never_cancels_someone_elses_job(provider: Harness, slurm: LocalSlurm) -> None:
    """The Slurm id we track now belongs to another job (ids wrap): it must survive."""
    other = slurm.sbatch("sleep 600", name="not-ucloud")
    slurm.wait_state(other, {"RUNNING"}, 60)
    ucloud_id = new_ucloud_id()
    provider.track(ucloud_id, other)  # tracked with our name, but Slurm's job has another
    status, _ = await provider.call("jobs/terminate", {"items": [job_body(ucloud_id)]})
    assert status == 200
    await asyncio.sleep(3)
    assert slurm.state(other) == "RUNNING"
    slurm.run("scancel", other)


async def test_extend_changes_slurms_time_limit_and_cores_allocation(provider: Harness, slurm: LocalSlurm) -> None:
    job = new_job(seconds=600)
    slurm_id = await create(provider, job)
    slurm.submitted.append(slurm_id)
    await wait_core_state(provider, job["id"], "RUNNING")
    request = {"items": [{"job": job, "requestedTime": {"hours": 0, "minutes": 10, "seconds": 0}}]}
    status, answer = await provider.call("jobs/extend", request)
    assert (status, answer) == (200, {"responses": [{}]})
    assert scontrol_job(slurm, slurm_id)["TimeLimit"] == "00:15:00"
    await wait_for(lambda: any(u["newTimeAllocation"] for u in provider.core.updates_for(job["id"])), 30)
    (extended,) = [u for u in provider.core.updates_for(job["id"]) if u["newTimeAllocation"]]
    assert extended["newTimeAllocation"] == 15 * 60 * 1000

    too_long = {"items": [{"job": job, "requestedTime": {"hours": 5, "minutes": 0, "seconds": 0}}]}
    status, answer = await provider.call("jobs/extend", too_long)
    assert status == 400 and "longer than this product allows" in answer["why"]
    slurm.run("scancel", slurm_id)


async def test_a_hostile_parameter_reaches_the_script_unchanged_and_runs_nothing(
    provider: Harness, slurm: LocalSlurm, tmp_path: Path
) -> None:
    marker = SHARED_TMP / f"pwned-{uuid.uuid4().hex}"  # where the job runs
    value = f"$(touch {marker}); \"quoted\" 'x' `touch {marker}` ; touch {marker}"
    job = new_job(value=value)
    slurm.submitted.append(await create(provider, job))
    await wait_core_state(provider, job["id"], "SUCCESS")
    assert (tmp_path / "jobs" / job["id"] / "value.txt").read_text() == value
    assert not marker.exists()


async def test_sbatch_refusals_reach_the_user_as_400(provider: Harness) -> None:
    job = new_job()
    job["specification"]["product"] = {"id": "short-1", "category": "cpu", "provider": PROVIDER_ID}
    job["specification"]["timeAllocation"] = {"hours": 0, "minutes": 30, "seconds": 0}  # partition allows 10
    status, answer = await provider.call("jobs", {"items": [job]})
    assert status == 400
    assert answer["why"].startswith("The requested time limit is larger than what the system allows (")
    assert provider.store.get([job["id"]]) == {}


async def test_twenty_concurrent_creates_each_answer_within_5_s(provider: Harness, slurm: LocalSlurm) -> None:
    async def timed(job: dict[str, Any]) -> float:
        started = time.monotonic()
        slurm.submitted.append(await create(provider, job))
        return time.monotonic() - started

    durations = await asyncio.gather(*(timed(new_job()) for _ in range(20)))
    print(f"\n20 concurrent creates: fastest {min(durations):.2f} s, slowest {max(durations):.2f} s")
    assert max(durations) < 5, durations
    assert len(provider.store.all_jobs()) == 20


async def test_a_retried_create_gets_the_same_answer_and_one_slurm_job(provider: Harness, slurm: LocalSlurm) -> None:
    job = new_job(seconds=30)
    first = await provider.call("jobs", {"items": [job]})
    second = await provider.call("jobs", {"items": [job]})
    assert first == second
    slurm.submitted.append(first[1]["responses"][0]["id"].split("/")[1])
    out = slurm.run("squeue", "-h", "-t", "all", f"--name={job['id']}", "-o", "%i").stdout.split()
    assert len(out) == 1


async def test_a_restarted_daemon_picks_up_where_it_was_and_sends_each_transition_once(
    slurm: LocalSlurm, make_harness: HarnessFactory, app_script: Path, tmp_path: Path
) -> None:
    store = tmp_path / "restart.sqlite3"
    sections = provider_sections(app_script, tmp_path)
    first = await make_harness(store_path=store, sections=sections, interval=1, max_interval=2)
    job = new_job(seconds=8)
    slurm.submitted.append(await create(first, job))
    await wait_core_state(first, job["id"], "RUNNING")
    shared_core = first.core
    await first.client.close()  # the daemon stops mid-job

    second = await make_harness(store_path=store, core=shared_core, sections=sections, interval=1, max_interval=2)
    await wait_core_state(second, job["id"], "SUCCESS")
    await asyncio.sleep(3)  # a few more monitor passes: nothing may be sent again
    updates = shared_core.updates_for(job["id"])
    assert [u["state"] for u in updates] == [None, "RUNNING", "SUCCESS"]


@pytest.fixture(scope="session")
def unix_user(slurm: LocalSlurm) -> Iterator[str]:
    """A real Unix user for owner-mapped submission (created for the session, removed afterwards)."""
    if not shutil.which("sudo"):
        pytest.skip("sudo is not installed (deploy/test.sh installs it); owner-mapped submission runs sbatch through sudo")
    name = "ucloudtest1"
    created = subprocess.run(["id", name], capture_output=True).returncode != 0
    if created:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", name], check=True)
    slurm.add_users(name)
    yield name
    if created:
        subprocess.run(["userdel", name], check=False)


async def test_jobs_run_as_their_owner_when_configured(
    slurm: LocalSlurm, make_harness: HarnessFactory, app_script: Path, unix_user: str
) -> None:
    jobs_dir = SHARED_TMP / f"ucloud-owner-jobs-{uuid.uuid4().hex[:8]}"
    jobs_dir.mkdir(mode=0o755)
    app_script.parent.chmod(0o755)
    app_script.chmod(0o644)
    sections = provider_sections(app_script, jobs_dir, run_as="owner", users={"donna#1234": unix_user})
    sections["jobs"]["directory"] = str(jobs_dir)
    h = await make_harness(sections=sections, interval=1, max_interval=2)
    job = new_job(value="mine", seconds=2)
    status, answer = await h.call("jobs", {"items": [job]}, username="donna#1234")
    assert status == 200, answer
    slurm_id = answer["responses"][0]["id"].split("/")[1]
    slurm.submitted.append(slurm_id)
    assert scontrol_job(slurm, slurm_id)["UserId"].startswith(f"{unix_user}(")
    await wait_core_state(h, job["id"], "SUCCESS")
    result = jobs_dir / job["id"] / "value.txt"
    assert result.read_text() == "mine"
    assert pwd.getpwuid(result.stat().st_uid).pw_name == unix_user

    status, answer = await h.call("jobs", {"items": [new_job()]}, username="stranger#9")
    assert status == 400 and "has no account on this cluster" not in answer["why"]  # mapped by the template...
    assert "no user 'stranger'" in answer["why"]  # ...to a user the cluster does not have
    shutil.rmtree(jobs_dir)
