"""Jobs that span nodes, on a real cluster of two: the two nodes of the single-host test cluster, or
the two compute containers of the compose cluster (deploy/docker), with this host as login node."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers import Harness, HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.ucloud.devcore import job_body

pytestmark = pytest.mark.slurm

# One task per node (the daemon asks for --ntasks-per-node=1): each names its node in a file of its
# own and then sleeps under a marker, so a test can look for what is still running anywhere.
SCRIPT = """#!/bin/bash
echo "$UCLOUD_NODES $SLURM_JOB_NUM_NODES $SLURM_JOB_NODELIST" > nodes.txt
srun bash -c 'echo "$SLURMD_NODENAME" > "rank.$SLURM_PROCID"; exec -a "$UCLOUD_PARAM_MARKER" sleep 600'
"""


def cluster_nodes(slurm: LocalSlurm) -> list[str]:
    return sorted(set(slurm.run("sinfo", "-h", "-N", "-o", "%N").stdout.split()))


def still_running(marker: str) -> list[str]:
    """Processes with this marker anywhere on this machine: the compose cluster's containers share
    this kernel, so the host sees their processes too."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return found.stdout.split()


@pytest.fixture
async def two_node_provider(slurm: LocalSlurm, make_harness: HarnessFactory, tmp_path: Path) -> Harness:
    if len(cluster_nodes(slurm)) < 2:
        pytest.fail(f"the test cluster must have two nodes; it has {cluster_nodes(slurm)}")
    script = tmp_path / "apps" / "two-nodes.sh"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    sections: dict[str, Any] = {
        "jobs": {"directory": str(tmp_path / "jobs")},
        "products": [{"id": "cpu-1", "category": "cpu", "partition": "normal", "cpus": 1, "memory_mb": 100,
                      "max_nodes": 2, "max_time_minutes": 60}],
        "applications": [{"name": "acme-batch", "version": "*", "script": str(script),
                          "parameters": {"marker": {"type": "text"}}}],
    }
    return await make_harness(sections=sections, interval=1, max_interval=2)


def two_node_job(marker: str, replicas: int = 2) -> dict[str, Any]:
    return job_body(
        new_ucloud_id(), "IN_QUEUE", product=("cpu-1", "cpu"), replicas=replicas, time_allocation=(0, 10, 0),
        parameters={"marker": {"type": "text", "value": marker}}, created_at=int(time.time() * 1000),
    )


async def test_a_two_replica_job_runs_on_two_nodes_and_terminate_ends_it_on_both(
    two_node_provider: Harness, slurm: LocalSlurm
) -> None:
    h = two_node_provider
    marker = f"ucloud-two-nodes-{uuid.uuid4().hex[:12]}"
    job = two_node_job(marker)
    status, answer = await h.call("jobs", {"items": [job]})
    assert status == 200, answer
    slurm_id = answer["responses"][0]["id"].split("/")[1]
    slurm.submitted.append(slurm_id)
    folder = Path(h.settings.jobs.directory) / job["id"]
    await wait_for(lambda: h.core.jobs.get(job["id"]) == "RUNNING", 120, interval=0.2)
    await wait_for(lambda: (folder / "rank.0").exists() and (folder / "rank.1").exists(), 60, interval=0.2)

    # What the script was given, and where its two tasks ran.
    ucloud_nodes, slurm_nodes, nodelist = (folder / "nodes.txt").read_text().split()
    assert (ucloud_nodes, slurm_nodes) == ("2", "2")
    hosts = slurm.run("scontrol", "show", "hostnames", nodelist).stdout.split()
    ranks = [(folder / f"rank.{n}").read_text().strip() for n in (0, 1)]
    assert len(set(hosts)) == 2 and sorted(ranks) == sorted(hosts), (hosts, ranks)
    assert set(hosts) <= set(cluster_nodes(slurm))
    squeue = slurm.run("squeue", "-h", "-j", slurm_id, "-o", "%D %T").stdout.split()
    assert squeue == ["2", "RUNNING"]
    await wait_for(lambda: len(still_running(marker)) == 2, 30, interval=0.2)

    status, answer = await h.call("jobs/terminate", {"items": [job]})
    assert (status, answer) == (200, {"responses": [{}]})
    await wait_for(lambda: h.core.jobs.get(job["id"]) == "SUCCESS", 60, interval=0.2)
    await wait_for(lambda: still_running(marker) == [], 60, interval=0.2)
    assert slurm.state(slurm_id) == "CANCELLED"
    steps = slurm.run("sacct", "-n", "-P", "-j", f"{slurm_id}.0", "-o", "NNodes,State").stdout.split()
    assert steps and steps[0].split("|")[0] == "2" and steps[0].split("|")[1].startswith("CANCELLED"), steps
    print(f"\ntwo-replica job {slurm_id} ran on {' and '.join(sorted(hosts))}; terminate left nothing on either")


async def test_more_replicas_than_the_product_allows_are_refused_before_slurm(
    two_node_provider: Harness, slurm: LocalSlurm
) -> None:
    h = two_node_provider
    job = two_node_job("never-runs", replicas=3)
    status, answer = await h.call("jobs", {"items": [job]})
    assert status == 400 and "Too many nodes requested: 3" in answer["why"], answer
    assert slurm.run("squeue", "-h", f"--name={job['id']}", "-o", "%i").stdout.strip() == ""
