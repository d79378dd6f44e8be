"""What operators watch: /metrics agrees with what really happened, /readyz names what is failing."""

from __future__ import annotations

import re

import pytest

from helpers import HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.appkeys import SENDER
from provider.ucloud.devcore import job_body
from provider.ucloud.models import JobState, JobUpdate


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(\{{{re.escape(want)}\}})? (\S+)$" if want else rf"^{re.escape(name)} (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.groups()[-1])
    raise AssertionError(f"{name} {labels} not in /metrics")


@pytest.mark.slurm
async def test_metrics_count_the_slurm_queries_the_daemon_really_ran(
    slurm: LocalSlurm, make_harness: HarnessFactory
) -> None:
    h = await make_harness(confirm_interval=600)
    running = new_ucloud_id()
    slurm_id = slurm.sbatch("sleep 600", name=running)
    slurm.wait_state(slurm_id, {"RUNNING"}, 60)
    h.track(running, slurm_id)
    gone = new_ucloud_id()
    h.track(gone, "987699")  # absent from squeue: costs one sacct a pass
    for n in range(3):
        passes = h.sync.passes
        believed = "IN_QUEUE" if n == 0 else "RUNNING"  # Core has RUNNING after the first update
        await h.verify([job_body(running, believed), job_body(gone, "RUNNING")])
        await wait_for(lambda before=passes: h.sync.passes > before, 30)
    await h.settled()

    text = await (await h.client.get("/metrics")).text()
    assert metric(text, "ucloud_provider_slurm_queries_total", command="squeue") == h.backend.calls["squeue"]
    assert metric(text, "ucloud_provider_slurm_queries_total", command="sacct") == h.backend.calls["sacct"]
    assert h.backend.calls["squeue"] == 3 and h.backend.calls["sacct"] == 3  # one of each per verify
    assert metric(text, "ucloud_provider_slurm_query_seconds_count", command="squeue") == 3
    assert metric(text, "ucloud_provider_jobs_tracked", state="RUNNING") == 1
    assert metric(text, "ucloud_provider_updates_sent_total") == 1  # RUNNING, once
    assert metric(text, "ucloud_provider_outbox_depth") == 0
    assert metric(text, "ucloud_provider_token_refreshes_total") >= 1
    route = "/ucloud/{provider_id}/jobs/verify"
    assert metric(text, "ucloud_provider_http_requests_total", method="POST", route=route, status="200") == 3
    slurm.run("scancel", slurm_id)


async def test_readyz_names_core_when_updates_cannot_be_delivered(make_harness: HarnessFactory) -> None:
    h = await make_harness()
    resp = await h.client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["ready"] is True

    h.core.fail_with = 503
    h.store.enqueue("1", JobUpdate(state=JobState.RUNNING, timestamp=1), 1)
    h.client.app[SENDER].wake()  # type: ignore[index]
    await wait_for(lambda: h.client.app[SENDER].failures >= 1, 30)  # type: ignore[index]
    resp = await h.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["core"].startswith("failing: 503") and body["checks"]["store"] == "ok"
    text = await (await h.client.get("/metrics")).text()
    assert metric(text, "ucloud_provider_outbox_depth") == 1
    assert metric(text, "ucloud_provider_outbox_oldest_age_seconds") > 0


@pytest.mark.slurm
async def test_readyz_names_slurm_when_slurmctld_is_down(slurm: LocalSlurm, make_harness: HarnessFactory) -> None:
    h = await make_harness()
    h.track(new_ucloud_id(), "987698")
    slurm.ctl("slurmctld", "stop")
    try:
        passes = h.sync.passes
        h.sync.request_active()
        await wait_for(lambda: h.sync.passes > passes, 60)
        resp = await h.client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["checks"]["slurm"].startswith("failing: squeue: squeue exited 1")
    finally:
        slurm.ctl("slurmctld", "start")
    passes = h.sync.passes
    h.sync.request_active()
    await wait_for(lambda: h.sync.passes > passes, 60)
    assert (await h.client.get("/readyz")).status == 200
