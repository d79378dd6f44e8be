"""Owner mode as documented: the daemon as a real non-root user, with exactly the sudoers rule of
docs/admin.md in a real /etc/sudoers.d file, submitting and cancelling jobs as their owner on the real Slurm.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from helpers import PROVIDER_ID, SHARED_TMP, LocalSlurm, new_ucloud_id, wait_for
from provider.ucloud.devcore import DevCore, DevCoreKeys, call_provider, follow_job, job_body

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
DAEMON_USER, JOB_USER, JOB_GROUP = "ucloudtestd", "ucloudtest3", "ucloudtestjobs"
SUDOERS = Path("/etc/sudoers.d/ucloud-slurm-provider-test")

SCRIPT = """#!/bin/bash
printf '%s' "$UCLOUD_PARAM_VALUE" > value.txt
id -un > whoami.txt
echo "visible to UCloud"
sleep "${UCLOUD_PARAM_SECONDS:-0}"
"""


def documented_sudoers_rule() -> str:
    """The rule docs/admin.md tells admins to install, word for word."""
    text = (REPO / "docs" / "admin.md").read_text()
    match = re.search(r"```\n# /etc/sudoers\.d/ucloud-slurm-provider[^\n]*\n(.*?)```", text, re.S)
    assert match, "docs/admin.md has no sudoers block"
    return match.group(1)


@dataclass
class Accounts:
    daemon: str
    job_user: str


@pytest.fixture(scope="module")
def accounts(slurm: LocalSlurm) -> Iterator[Accounts]:
    """A non-root service user, a job user in the group the rule names, and the rule itself installed."""
    if os.geteuid() != 0:
        pytest.skip("creating users and a sudoers file needs root")
    if not shutil.which("sudo") or not shutil.which("visudo"):
        pytest.skip("sudo is not installed (deploy/test.sh installs it)")
    made: list[list[str]] = []
    if subprocess.run(["getent", "group", JOB_GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", JOB_GROUP], check=True)
        made.append(["groupdel", JOB_GROUP])
    for user, extra in ((DAEMON_USER, ["--system", "--shell", "/usr/sbin/nologin"]), (JOB_USER, ["--shell", "/bin/bash"])):
        if subprocess.run(["id", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--no-create-home", *extra, user], check=True)
            made.insert(0, ["userdel", user])
    subprocess.run(["usermod", "-a", "-G", JOB_GROUP, JOB_USER], check=True)
    slurm.add_users(JOB_USER)
    rule = documented_sudoers_rule().replace("ucloud-provider", DAEMON_USER).replace("%ucloud-jobs", f"%{JOB_GROUP}")
    candidate = SUDOERS.with_name(SUDOERS.name + ".new")
    candidate.write_text(rule)
    candidate.chmod(0o440)
    checked = subprocess.run(["visudo", "-cf", str(candidate)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    candidate.rename(SUDOERS)
    try:
        yield Accounts(DAEMON_USER, JOB_USER)
    finally:
        SUDOERS.unlink(missing_ok=True)
        for command in made:
            subprocess.run(command, check=False, capture_output=True)


def daemon_python() -> tuple[str, str]:
    """An interpreter the service user may run, and a PYTHONPATH with this checkout and its packages.

    The test's own interpreter may sit where other users cannot go (e.g. under /root); the system's
    Python of the same version runs the same pure and cp3XX packages.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = Path("/usr/bin") / version
    if not system.exists():
        pytest.skip(f"no /usr/bin/{version} for the non-root daemon (this interpreter may not be readable by it)")
    pythonpath = f"{REPO}{os.pathsep}{sysconfig.get_paths()['purelib']}{os.pathsep}{sysconfig.get_paths()['platlib']}"
    probe = as_daemon_user(str(system), "-c", "import provider.cli", env={"PYTHONPATH": pythonpath})
    if probe.returncode != 0:  # e.g. a checkout under /root, which other users cannot enter
        pytest.skip(f"the service user cannot import this checkout ({REPO}): {probe.stderr.strip()[-200:]}")
    return str(system), pythonpath


def as_daemon_user(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    entry = pwd.getpwnam(DAEMON_USER)
    return subprocess.run(
        list(argv), user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], capture_output=True, text=True,
        env=env, cwd="/", timeout=60,
    )


def test_the_documented_rule_allows_sbatch_and_scancel_and_nothing_else(accounts: Accounts, slurm: LocalSlurm) -> None:
    env = {"PATH": os.environ["PATH"]}
    allowed = as_daemon_user("sudo", "-n", "-u", JOB_USER, f"SLURM_CONF={slurm.conf}", "--", "sbatch", "--version", env=env)
    assert allowed.returncode == 0, allowed.stderr
    for argv in (["env", "id"], ["id"], ["scontrol", "--version"], ["bash", "-c", "id"]):
        refused = as_daemon_user("sudo", "-n", "-u", JOB_USER, "--", *argv, env=env)
        assert refused.returncode != 0, argv
    as_root = as_daemon_user("sudo", "-n", "-u", "root", "--", "sbatch", "--version", env=env)
    assert as_root.returncode != 0


@pytest.fixture
async def core(aiohttp_server: Any, keys: DevCoreKeys) -> AsyncIterator[tuple[DevCore, str]]:
    devcore = DevCore(keys, PROVIDER_ID)
    server: TestServer = await aiohttp_server(devcore.make_app(), host="127.0.0.1")
    yield devcore, str(server.make_url("")).rstrip("/")


@pytest.fixture
def home(accounts: Accounts) -> Iterator[Path]:
    """The daemon's files, owned by its user, under a path every user may traverse (pytest's is 0700)."""
    path = SHARED_TMP / f"ucloud-owner-test-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    entry = pwd.getpwnam(accounts.daemon)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def install(path: Path, data: bytes | str, owner: str, mode: int) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    entry = pwd.getpwnam(owner)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)
    return path


async def test_a_non_root_daemon_runs_jobs_as_their_owner_with_only_the_documented_rule(
    accounts: Accounts, slurm: LocalSlurm, core: tuple[DevCore, str], keys: DevCoreKeys, home: Path
) -> None:
    devcore, core_url = core
    daemon = accounts.daemon
    pub = install(home / "ucloud_key.pub", keys.public_key_file.read_bytes(), daemon, 0o644)
    token = install(home / "refresh_token", keys.refresh_token_file.read_bytes(), daemon, 0o600)
    script = install(home / "acme.sh", SCRIPT, "root", 0o755)
    jobs_dir = home / "jobs"
    jobs_dir.mkdir(mode=0o755)
    state = home / "state"
    state.mkdir(mode=0o700)
    for path in (jobs_dir, state):
        os.chown(path, pwd.getpwnam(daemon).pw_uid, pwd.getpwnam(daemon).pw_gid)
    port = unused_port()
    config = install(
        home / "provider.toml",
        f"""
[provider]
id = "{PROVIDER_ID}"
[server]
port = {port}
[ucloud]
url = "{core_url}"
public_key_file = "{pub}"
refresh_token_file = "{token}"
[slurm]
backend = "cli"
conf = "{slurm.conf}"
[store]
path = "{state}/provider.sqlite3"
[reconcile]
interval = 1
[jobs]
directory = "{jobs_dir}"
run_as = "owner"
[jobs.users]
"donna#1234" = "{accounts.job_user}"
[[products]]
id = "cpu-1"
category = "cpu"
partition = "normal"
[[applications]]
name = "acme-batch"
script = "{script}"
[applications.parameters]
value = {{ type = "text", optional = true }}
seconds = {{ type = "integer", optional = true }}
[logging]
format = "json"
""",
        daemon,
        0o640,
    )
    log = home / "daemon.log"
    entry = pwd.getpwnam(daemon)
    python, pythonpath = daemon_python()
    process = subprocess.Popen(
        [python, "-m", "provider", "serve", "--config", str(config)],
        user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], cwd="/",
        env={"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": pythonpath},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def call(operation: str, body: dict[str, Any]) -> tuple[int, Any]:
                return await call_provider(
                    session, url, f"/ucloud/{PROVIDER_ID}/{operation}", keys, body, username="donna#1234"
                )

            for _ in range(150):
                if process.poll() is not None:
                    pytest.fail(f"the daemon stopped: {log.read_text()}")
                try:
                    async with session.get(f"{url}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)

            value = "a,b=c,LD_PRELOAD=/x\nsecond line 'q' \"dq\" $(id) `id` \\ end"
            job = job_body(new_ucloud_id(), "IN_QUEUE", provider=PROVIDER_ID, product=("cpu-1", "cpu"),
                           parameters={"value": {"type": "text", "value": value}}, time_allocation=(0, 5, 0),
                           owner="donna#1234")
            devcore.register(job["id"])
            status, answer = await call("jobs", {"items": [job]})
            assert status == 200, (answer, log.read_text())
            slurm_id = answer["responses"][0]["id"].split("/")[1]
            slurm.submitted.append(slurm_id)
            info = slurm.run("scontrol", "show", "job", "-o", slurm_id).stdout
            assert f"UserId={accounts.job_user}(" in info and f"JobName={job['id']}" in info
            await wait_for(lambda: devcore.jobs.get(job["id"]) == "SUCCESS", 120, interval=0.2)
            folder = jobs_dir / job["id"]
            assert (folder / "value.txt").read_text() == value  # commas, newline, quotes: as sent
            assert (folder / "whoami.txt").read_text().strip() == accounts.job_user
            assert pwd.getpwuid((folder / "value.txt").stat().st_uid).pw_name == accounts.job_user
            # UCloud's job page: the non-root daemon reads the owner's output through the folder's default ACL
            frames = [frame async for frame in follow_job(session, url, PROVIDER_ID, keys, job)]
            assert frames[-1]["type"] == "response" and frames[-1]["status"] == 200, frames
            stdout = "".join(f["payload"]["stdout"] or "" for f in frames if f["type"] == "message")
            assert stdout == "visible to UCloud\n", frames

            # terminate: scancel as the owner, through the same rule
            long_job = job_body(new_ucloud_id(), "IN_QUEUE", provider=PROVIDER_ID, product=("cpu-1", "cpu"),
                                parameters={"seconds": {"type": "integer", "value": 600}}, time_allocation=(0, 5, 0),
                                owner="donna#1234")
            devcore.register(long_job["id"])
            status, answer = await call("jobs", {"items": [long_job]})
            assert status == 200, answer
            long_id = answer["responses"][0]["id"].split("/")[1]
            slurm.submitted.append(long_id)
            await wait_for(lambda: devcore.jobs.get(long_job["id"]) == "RUNNING", 60, interval=0.2)
            status, answer = await call("jobs/terminate", {"items": [long_job]})
            assert status == 200, answer
            await wait_for(lambda: slurm.state(long_id) == "CANCELLED", 30)
            await wait_for(lambda: devcore.jobs.get(long_job["id"]) == "SUCCESS", 60, interval=0.2)
        output = log.read_text()
        assert "sudo:" not in output and "Traceback" not in output, output
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
