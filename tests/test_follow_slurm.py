"""Following a job's output live, against the real Slurm, with a websocket client that speaks Core's frames.

The client does what Go's Core does in ``jobsFollow``: dial ``/ucloud/jobs.provider.<id>/websocket`` with
its bearer token, send the ``init`` frame with the Job, and read text frames until the stream ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import PROVIDER_ID, Harness, HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.appkeys import FOLLOW
from provider.ucloud.devcore import job_body
from provider.ucloud.models import JobState

pytestmark = pytest.mark.slurm

# Writes to stdout and stderr over time, with a byte that is not UTF-8 and a line longer than a frame.
SCRIPT = """#!/bin/bash
echo "first line"
echo "first error" >&2
sleep 3
echo "second line"
printf 'not utf-8: \\xff\\xfe end\\n'
head -c 200000 /dev/zero | tr '\\0' 'x'; echo
srun --overcommit --ntasks=2 --ntasks-per-node=2 --output=stdout.%t.txt bash -c 'echo "hello from rank $SLURM_PROCID"'
sleep "${UCLOUD_PARAM_SECONDS:-0}"
echo "done"
"""


@pytest.fixture
async def provider(slurm: LocalSlurm, make_harness: HarnessFactory, tmp_path: Path) -> Harness:
    script = tmp_path / "apps" / "talker.sh"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    sections = {
        "jobs": {"directory": str(tmp_path / "jobs")},
        "products": [{"id": "cpu-1", "category": "cpu", "partition": "normal", "max_time_minutes": 60}],
        "applications": [
            {"name": "acme-batch", "version": "*", "script": str(script),
             "parameters": {"seconds": {"type": "integer", "optional": True}}},
        ],
    }
    return await make_harness(sections=sections, interval=1, max_interval=2)


def new_job(seconds: int = 0) -> dict[str, Any]:
    return job_body(
        new_ucloud_id(), "IN_QUEUE", product=("cpu-1", "cpu"), time_allocation=(0, 5, 0),
        parameters={"seconds": {"type": "integer", "value": seconds}}, created_at=int(time.time() * 1000),
    )


async def create(h: Harness, job: dict[str, Any]) -> None:
    status, answer = await h.call("jobs", {"items": [job]})
    assert status == 200, answer


def follow_url(h: Harness, provider_id: str = PROVIDER_ID) -> str:
    hint = base64.urlsafe_b64encode(b"user").decode()
    return str(h.client.make_url(f"/ucloud/jobs.provider.{provider_id}/websocket")) + f"?usernameHint={hint}"


def init_frame(job: dict[str, Any]) -> dict[str, Any]:
    return {"call": f"jobs.provider.{PROVIDER_ID}.follow", "streamId": "ignored",
            "payload": {"type": "init", "job": job}, "bearer": "", "project": None}


async def follow(h: Harness, job: dict[str, Any], *, stop_after: int | None = None, timeout: float = 120) -> list[dict[str, Any]]:
    """Every frame until the stream's ``response`` (or ``stop_after`` frames, then hang up)."""
    frames: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(
        follow_url(h), headers={"Authorization": f"Bearer {h.keys.service_token()}"}
    ) as ws:
        await ws.send_str(json.dumps(init_frame(job)))
        async with asyncio.timeout(timeout):
            async for message in ws:
                assert message.type == aiohttp.WSMsgType.TEXT
                frame = json.loads(message.data)
                frames.append(frame)
                if frame["type"] == "response" or (stop_after is not None and len(frames) >= stop_after):
                    break
    return frames


def text_of(frames: list[dict[str, Any]], stream: str, rank: int = 0) -> str:
    return "".join(f["payload"][stream] or "" for f in frames if f["type"] == "message" and f["payload"]["rank"] == rank)


async def test_a_job_is_followed_from_before_it_starts_to_after_it_ends(provider: Harness) -> None:
    job = new_job()
    await create(provider, job)
    frames = await follow(provider, job)  # opened at once: the job may still be queued
    assert frames[-1]["type"] == "response" and frames[-1]["status"] == 200 and frames[-1]["streamId"] == "ignored"
    for frame in frames[:-1]:  # Go's JobLogMessage inside Core's WSResponseMessage
        assert frame["type"] == "message" and frame["streamId"] == "ignored"
        assert set(frame["payload"]) == {"streamId", "rank", "stdout", "stderr", "channel"} and frame["payload"]["rank"] in (0, 1)
        assert len(json.dumps(frame)) < 200_000  # a long line is cut into frames
    stdout = text_of(frames, "stdout")
    assert stdout.startswith("first line\nsecond line\nnot utf-8: \ufffd\ufffd end\n")
    assert "x" * 200_000 in stdout and "\ndone\n" in stdout
    assert text_of(frames, "stderr") == "first error\n"
    # srun --output=stdout.%t.txt: each task's output with its rank (task 0's joins the batch script's)
    assert text_of(frames, "stdout", rank=1) == "hello from rank 1\n"
    assert "hello from rank 0\n" in stdout
    stored = provider.store.get([job["id"]])[job["id"]]
    assert stored.state is JobState.SUCCESS  # the stream ended because the job was final


async def test_a_late_follower_gets_the_history_then_the_rest(provider: Harness) -> None:
    job = new_job(seconds=4)
    await create(provider, job)
    folder = Path(provider.settings.jobs.directory) / job["id"]
    await wait_for(lambda: "second line" in (folder / "stdout.txt").read_text(errors="replace") if (folder / "stdout.txt").exists() else False, 60)
    frames = await follow(provider, job)
    stdout = text_of(frames, "stdout")
    assert stdout.count("first line") == 1 and "\ndone\n" in stdout and frames[-1]["status"] == 200


async def test_followers_share_one_reader_and_one_that_hangs_up_changes_nothing(provider: Harness) -> None:
    job = new_job(seconds=3)
    await create(provider, job)
    hub = provider.client.app[FOLLOW]  # type: ignore[index]
    quitter = asyncio.ensure_future(follow(provider, job, stop_after=1))
    crowd = [asyncio.ensure_future(follow(provider, job)) for _ in range(100)]
    await wait_for(lambda: hub.followed_jobs == 1, 30)  # 101 sockets, one reader
    assert len(await quitter) == 1
    results = await asyncio.gather(*crowd)
    for frames in results:
        assert frames[-1]["status"] == 200
        assert text_of(frames, "stdout").startswith("first line\n") and "\ndone\n" in text_of(frames, "stdout")
        assert text_of(frames, "stdout", rank=1) == "hello from rank 1\n"
        assert text_of(frames, "stderr") == "first error\n"
    await wait_for(lambda: hub.followed_jobs == 0, 10)  # the reader stops with its last follower


async def test_cancel_ends_the_stream(provider: Harness) -> None:
    job = new_job(seconds=60)
    await create(provider, job)
    async with aiohttp.ClientSession() as session, session.ws_connect(
        follow_url(provider), headers={"Authorization": f"Bearer {provider.keys.service_token()}"}
    ) as ws:
        await ws.send_str(json.dumps(init_frame(job)))
        await ws.send_str(json.dumps({"call": f"jobs.provider.{PROVIDER_ID}.follow", "streamId": "ignored",
                                      "payload": {"type": "cancel", "streamId": "ignored"}}))
        async with asyncio.timeout(30):
            frames = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
    assert frames[-1]["type"] == "response" and frames[-1]["status"] == 200
    await provider.call("jobs/terminate", {"items": [job]})


@pytest.mark.parametrize(("provider_id", "token", "status"), [("slurm", "forged", 401), ("other", "core", 404)])
async def test_no_upgrade_for_a_forged_token_or_another_provider(
    provider: Harness, provider_id: str, token: str, status: int
) -> None:
    bearer = provider.keys.service_token() if token == "core" else "eyJhbGciOiJub25lIn0.e30."
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(follow_url(provider, provider_id), headers={"Authorization": f"Bearer {bearer}"})
    assert refused.value.status == status


async def test_a_job_the_provider_never_ran_is_said_so(provider: Harness) -> None:
    frames = await follow(provider, job_body(new_ucloud_id(), "RUNNING"), timeout=30)
    assert frames[-1]["type"] == "response" and frames[-1]["status"] == 404
    assert "not known to the provider" in text_of(frames, "stderr")
