"""The admin's commands against a real Slurm: jobs track/list/untrack and verify --dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LocalSlurm, new_ucloud_id
from provider.ucloud.devcore import DevCoreKeys

pytestmark = pytest.mark.slurm


@pytest.fixture
def config(tmp_path: Path, keys: DevCoreKeys, slurm: LocalSlurm) -> Path:
    path = tmp_path / "provider.toml"
    path.write_text(
        f"""
[ucloud]
public_key_file = "{keys.public_key_file}"
refresh_token_file = "{keys.refresh_token_file}"
[slurm]
backend = "cli"
conf = "{slurm.conf}"
[store]
path = "{tmp_path}/state/provider.sqlite3"
"""
    )
    return path


def cli(config: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ucloud-slurm-provider <command words> --config FILE -- <args>`` as an admin would."""
    return subprocess.run(
        [sys.executable, "-m", "provider", *command.split(), "--config", str(config), *(["--", *args] if args else [])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )


def test_track_list_untrack_a_real_job(config: Path, slurm: LocalSlurm) -> None:
    ucloud_id = new_ucloud_id()
    slurm_id = slurm.sbatch("sleep 600", name=ucloud_id)
    done = cli(config, "jobs track", ucloud_id, slurm_id)
    assert done.returncode == 0, done.stderr
    assert f"name check: '{ucloud_id}'" in done.stdout

    listing = cli(config, "jobs list --json")
    (row,) = [json.loads(line) for line in listing.stdout.splitlines()]
    assert (row["ucloud_id"], row["slurm_id"], row["state"], row["expected_name"]) == (ucloud_id, slurm_id, "IN_QUEUE", ucloud_id)

    again = cli(config, "jobs track", ucloud_id, slurm_id)
    assert again.returncode == 2 and f"UCloud job {ucloud_id} is already tracked" in again.stderr

    plan = cli(config, "verify --dry-run")
    assert plan.returncode == 0, plan.stderr
    line = next(line for line in plan.stdout.splitlines() if line.startswith(ucloud_id))
    assert "RUNNING Your job is now running" in line or "IN_QUEUE" in line  # running, or still pending

    assert cli(config, "jobs untrack", ucloud_id).returncode == 0
    assert cli(config, "jobs list --json").stdout == ""
    slurm.run("scancel", slurm_id)


def test_tracking_an_id_slurm_does_not_know_needs_force(config: Path, slurm: LocalSlurm) -> None:
    refused = cli(config, "jobs track", "1", "987653")
    assert refused.returncode == 1
    assert "Slurm does not know job 987653 (neither squeue nor sacct lists it); use --force" in refused.stderr
    assert cli(config, "jobs track --force", "1", "987653").returncode == 0


@pytest.mark.parametrize("bad", ["12;rm -rf /", "-1", "abc", "1_2_3", ""])
def test_slurm_ids_are_validated(config: Path, bad: str) -> None:
    done = cli(config, "jobs track", "1", bad)
    assert done.returncode == 2 and "is not a Slurm job id" in done.stderr


def test_check_config_says_which_backend_auto_chose_and_why(config: Path) -> None:
    config.write_text(config.read_text().replace('backend = "cli"', 'backend = "auto"'))
    done = cli(config, "check-config")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("slurm backend:"))
    if "slurm backend: pyslurm" in line:
        pytest.skip(f"a matching pyslurm is installed here, so auto chose it: {line}")
    assert line.startswith("slurm backend: cli (auto: ") and line.endswith("; using squeue and sacct)")


def test_backend_pyslurm_that_cannot_serve_this_slurm_stops_the_start(config: Path, slurm: LocalSlurm) -> None:
    config.write_text(config.read_text().replace('backend = "cli"', 'backend = "pyslurm"'))
    version = slurm.run("scontrol", "--version").stdout.split()[-1]
    major_minor = ".".join(version.split(".")[:2])
    for command in ("check-config", "serve"):
        done = cli(config, command)
        if done.returncode == 0:
            pytest.skip("a pyslurm matching this cluster's Slurm is installed here")
        assert done.returncode == 2
        assert f"This cluster runs Slurm {version}; it needs a pyslurm built for Slurm {major_minor}" in done.stderr
