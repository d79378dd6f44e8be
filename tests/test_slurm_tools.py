"""One owner for running a Slurm tool: the argument lists it builds, and bin_dir against a real Slurm."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import HarnessFactory, LocalSlurm, new_ucloud_id
from provider.slurm.commands import CommandBackend
from provider.slurm.process import SlurmTools
from provider.ucloud.devcore import job_body


def test_without_bin_dir_the_bare_name_is_found_on_path() -> None:
    assert SlurmTools().command("sbatch", ["--parsable", "job.sh"]) == ["sbatch", "--parsable", "job.sh"]


def test_bin_dir_is_joined_once_whatever_its_trailing_slash() -> None:
    for bin_dir in ("/opt/slurm/bin", "/opt/slurm/bin/"):
        tools = SlurmTools(bin_dir=bin_dir)
        assert tools.command("sbatch", ["x"]) == ["/opt/slurm/bin/sbatch", "x"]
        assert tools.command("squeue", []) == ["/opt/slurm/bin/squeue"]


def test_as_an_owner_sudo_runs_the_tool_itself_with_slurm_conf_on_its_command_line() -> None:
    tools = SlurmTools(bin_dir="/opt/slurm/bin", slurm_conf="/etc/slurm/x.conf")
    assert tools.command("scancel", ["--name=77", "12"], user="donna") == [
        "sudo", "-n", "-u", "donna", "SLURM_CONF=/etc/slurm/x.conf", "--", "/opt/slurm/bin/scancel", "--name=77", "12",
    ]
    # No env(1) anywhere: a sudoers rule naming sbatch and scancel only must be enough.
    assert "env" not in tools.command("sbatch", ["job.sh"], user="donna")


def test_as_an_owner_without_slurm_conf_nothing_is_set_on_sudos_command_line() -> None:
    assert SlurmTools().command("sbatch", ["job.sh"], user="donna") == ["sudo", "-n", "-u", "donna", "--", "sbatch", "job.sh"]


def test_the_environment_carries_slurm_conf_when_configured() -> None:
    assert SlurmTools(slurm_conf="/etc/slurm/x.conf").environment["SLURM_CONF"] == "/etc/slurm/x.conf"
    assert SlurmTools().environment.get("SLURM_CONF") == os.environ.get("SLURM_CONF")


async def test_a_tool_that_overruns_is_stopped_with_its_process_group(tmp_path: Path) -> None:
    """A timed-out command's children die too (through sudo, the tool is sudo's child)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "child.pid"
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\nsleep 300 &\necho $! > {marker}\nwait\n")
    (bin_dir / "sbatch").chmod(0o755)
    from provider.slurm.process import CommandTimeout

    with pytest.raises(CommandTimeout):
        await SlurmTools(bin_dir=str(bin_dir)).run("sbatch", [], timeout=1)
    child = int(marker.read_text())
    import asyncio

    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"the tool's child {child} outlived the timeout")


@pytest.fixture
def slurm_bin_dir(slurm: LocalSlurm, tmp_path: Path) -> Path:
    """A directory of the real Slurm tools, as a site with Slurm under /opt would have: symlinks, and an
    sbatch that notes each call (so the test knows this directory was used, not PATH)."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    for tool in ("scancel", "scontrol", "squeue", "sacct"):
        real = shutil.which(tool)
        assert real is not None, tool
        (bin_dir / tool).symlink_to(real)
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {bin_dir}/sbatch.calls\nexec {shutil.which("sbatch")} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    return bin_dir


@pytest.mark.slurm
async def test_bin_dir_set_create_and_queries_work_against_the_real_slurm(
    slurm: LocalSlurm, slurm_bin_dir: Path, make_harness: HarnessFactory, tmp_path: Path
) -> None:
    from test_jobs_slurm import SCRIPT, provider_sections

    script = tmp_path / "apps" / "job.sh"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    sections = provider_sections(script, tmp_path)
    sections["slurm"] = {"backend": "cli", "conf": slurm.conf, "bin_dir": str(slurm_bin_dir)}
    backend = CommandBackend(slurm_conf=slurm.conf, bin_dir=str(slurm_bin_dir), timeout=20)
    h = await make_harness(sections=sections, backend=backend, interval=1, max_interval=2)
    assert h.settings.slurm.bin_dir == str(slurm_bin_dir)
    job = job_body(new_ucloud_id(), "IN_QUEUE", product=("cpu-1", "cpu"), time_allocation=(0, 5, 0))
    status, answer = await h.call("jobs", {"items": [job]})
    assert status == 200, answer
    slurm_id = answer["responses"][0]["id"].split("/")[1]
    slurm.submitted.append(slurm_id)
    assert f"--job-name={job['id']}" in (slurm_bin_dir / "sbatch.calls").read_text()
    live = await backend.live_jobs()
    assert live.ok and live.jobs[slurm_id].name == job["id"]
    history = await backend.finished_jobs([slurm_id])
    assert history.ok
