"""Nothing orphaned, nothing lost, no 500, against the real Slurm: a frozen slurmctld during a create,
the store's disk full during a create and during a verify, the daemon killed between sbatch and commit.

The disk is really full: the store lives on a small tmpfs filled to the last page (a loop mount would do
the same; SQLite's max_page_count would not exercise the WAL's own writes).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from helpers import PROVIDER_ID, Harness, HarnessFactory, LocalSlurm, new_ucloud_id, wait_for
from provider.appkeys import SWEEPER
from provider.store import Store
from provider.ucloud.devcore import DevCore, DevCoreKeys, call_provider, job_body
from test_jobs_slurm import app_script, new_job, provider_sections  # noqa: F401 (app_script: a fixture)

pytestmark = pytest.mark.slurm


def slurm_jobs_named(slurm: LocalSlurm, name: str) -> dict[str, str]:
    """Slurm id -> state of every job slurmctld holds under this name (finished ones included)."""
    out = slurm.run("squeue", "-h", "-t", "all", f"--name={name}", "-o", "%i %T").stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def alive(states: dict[str, str]) -> dict[str, str]:
    return {i: s for i, s in states.items() if s not in ("CANCELLED", "COMPLETED", "FAILED", "TIMEOUT")}


# -- a frozen slurmctld -------------------------------------------------------------------------------


@pytest.fixture
def frozen_ctld(slurm: LocalSlurm) -> Iterator[Any]:
    """freeze()/thaw() slurmctld (SIGSTOP/SIGCONT); always thawed at the end."""
    frozen = False

    class Ctl:
        def freeze(self) -> None:
            nonlocal frozen
            slurm.ctl("slurmctld", "freeze")
            frozen = True

        def thaw(self) -> float:
            nonlocal frozen
            slurm.ctl("slurmctld", "thaw")
            frozen = False
            return time.monotonic()

    yield Ctl()
    if frozen:
        slurm.ctl("slurmctld", "thaw")


async def test_creates_while_slurmctld_is_frozen_leave_no_orphan(
    slurm: LocalSlurm, make_harness: HarnessFactory, app_script: Path, tmp_path: Path, frozen_ctld: Any
) -> None:
    sections = provider_sections(app_script, tmp_path, submit_timeout=2)
    h = await make_harness(sections=sections, interval=1, max_interval=2, missing_window=20, confirm_interval=1)
    jobs = [new_job(seconds=600) for _ in range(3)]
    ids = [job["id"] for job in jobs]
    frozen_ctld.freeze()
    started = time.monotonic()
    answers = await asyncio.gather(*(h.call("jobs", {"items": [job]}) for job in jobs))
    answered = time.monotonic() - started
    for status, answer in answers:
        assert status == 400 and "did not answer in time" in answer["why"], answer
    for ucloud_id in ids:
        assert not (tmp_path / "jobs" / ucloud_id).exists()  # a refused create leaves no folder
    assert h.store.get(ids) == {} and sorted(i.ucloud_id for i in h.store.intents()) == sorted(ids)
    await asyncio.sleep(3)
    thawed = frozen_ctld.thaw()

    # slurmctld takes the sbatches still waiting in its backlog, and the sweeper cancels those jobs.
    def held() -> dict[str, dict[str, str]]:
        return {ucloud_id: slurm_jobs_named(slurm, ucloud_id) for ucloud_id in ids}

    await wait_for(lambda: all(held().values()), 60, interval=0.2)
    appeared = time.monotonic() - thawed
    await wait_for(lambda: not any(alive(states) for states in held().values()), 60, interval=0.1)
    cancelled = time.monotonic() - thawed
    found = held()
    for states in found.values():
        slurm.submitted.extend(states)
        # Cancelled by the sweeper, or (a race CI met) failed at its start before the sweeper came: the
        # refused create removed the job's folder, so Slurm could not open its output there. A 600 s job
        # that ran would still be alive; either way none of it ran.
        assert len(states) == 1 and set(states.values()) <= {"CANCELLED", "FAILED"}, found
    by_sweeper = [i for states in found.values() for i, state in states.items() if state == "CANCELLED"]
    assert len(by_sweeper) <= h.client.app[SWEEPER].cancelled_total <= len(ids)
    assert not any((tmp_path / "jobs" / ucloud_id).exists() for ucloud_id in ids)
    assert h.store.get(ids) == {}
    # Settled once Slurm has shown nothing to cancel over the window; nothing tracked, nothing left.
    await wait_for(lambda: h.store.intents() == [], 60, interval=0.5)
    print(
        f"\nfrozen slurmctld: {len(ids)} creates answered 400 within {answered:.1f} s; after the thaw Slurm made "
        f"{sum(len(s) for s in found.values())} jobs (within {appeared:.1f} s), {len(by_sweeper)} cancelled by the "
        f"sweeper, all ended {cancelled:.1f} s after the thaw; orphans left: 0"
    )


# -- the store's disk full ----------------------------------------------------------------------------


class SmallDisk:
    """A 4 MB tmpfs for the store, filled to the last page on demand."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.filler = mount / "filler"

    def fill(self) -> None:
        """Write until ENOSPC, in pages and then in bytes (tmpfs may leave part of a page)."""
        for name, chunk in (("filler", 4096), ("filler2", 1)):
            fd = os.open(self.mount / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
            finally:
                os.close(fd)

    def free(self) -> None:
        for name in ("filler", "filler2"):
            (self.mount / name).unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a full disk needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def readyz_store(h: Harness) -> str:
    async with h.session.get(h.client.make_url("/readyz")) as resp:
        return str((await resp.json())["checks"]["store"])


async def test_a_create_with_the_disk_already_full_is_refused_before_sbatch(
    slurm: LocalSlurm, make_harness: HarnessFactory, app_script: Path, tmp_path: Path, small_disk: SmallDisk
) -> None:
    h = await make_harness(store_path=small_disk.mount / "provider.sqlite3", sections=provider_sections(app_script, tmp_path))
    small_disk.fill()
    try:
        assert (await readyz_store(h)).startswith("failing: cannot write")
        job = new_job()
        status, answer = await h.call("jobs", {"items": [job]})
        assert status == 400 and "cannot record new jobs" in answer["why"], answer
        assert not (tmp_path / "jobs" / job["id"]).exists()
        await asyncio.sleep(2)
        assert slurm_jobs_named(slurm, job["id"]) == {}  # sbatch never ran
    finally:
        small_disk.free()
    assert await readyz_store(h) == "ok"


@pytest.fixture
def held_sbatch(slurm: LocalSlurm, tmp_path: Path) -> Path:
    """A bin_dir whose sbatch submits for real, notes the Slurm id, then waits for ``release`` (at most
    60 s) before answering: the window between sbatch and the daemon's commit, held open."""
    bin_dir = tmp_path / "held-bin"
    bin_dir.mkdir()
    for tool in ("scancel", "scontrol", "squeue", "sacct"):
        (bin_dir / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        f'out=$({shutil.which("sbatch")} "$@") || exit $?\n'
        f'echo "$out $$" > {bin_dir}/submitted\n'
        f"for _ in $(seq 600); do [ -e {bin_dir}/release ] && break; sleep 0.1; done\n"
        'echo "$out"\n'
    )
    (bin_dir / "sbatch").chmod(0o755)
    return bin_dir


def held_sections(app_script: Path, tmp_path: Path, bin_dir: Path, slurm: LocalSlurm) -> dict[str, Any]:
    sections = provider_sections(app_script, tmp_path, submit_timeout=90)
    sections["slurm"] = {"backend": "cli", "conf": slurm.conf, "bin_dir": str(bin_dir)}
    return sections


async def test_the_disk_filling_between_sbatch_and_commit_gives_400_and_no_orphan(
    slurm: LocalSlurm,
    make_harness: HarnessFactory,
    app_script: Path,
    tmp_path: Path,
    small_disk: SmallDisk,
    held_sbatch: Path,
) -> None:
    h = await make_harness(
        store_path=small_disk.mount / "provider.sqlite3",
        sections=held_sections(app_script, tmp_path, held_sbatch, slurm),
        missing_window=5,
    )
    job = new_job(seconds=600)
    create = asyncio.ensure_future(h.call("jobs", {"items": [job]}))
    try:
        await wait_for(lambda: (held_sbatch / "submitted").exists(), 60)
        slurm_id = (held_sbatch / "submitted").read_text().split()[0]
        slurm.submitted.append(slurm_id)
        small_disk.fill()
        (held_sbatch / "release").touch()
        status, answer = await create
        assert status == 400 and "cannot record new jobs" in answer["why"], answer
        assert not (tmp_path / "jobs" / job["id"]).exists()
        await wait_for(lambda: slurm.state(slurm_id) == "CANCELLED", 30)
        assert (await readyz_store(h)).startswith("failing: cannot write")
        assert [i.ucloud_id for i in h.store.intents()] == [job["id"]]  # cannot be forgotten while full
    finally:
        create.cancel()
        small_disk.free()
    await wait_for(lambda: h.store.intents() == [], 60, interval=0.5)  # settled once the disk has room
    assert h.store.get([job["id"]]) == {} and alive(slurm_jobs_named(slurm, job["id"])) == {}
    assert await readyz_store(h) == "ok"


async def test_a_verify_accepted_while_the_disk_is_full_is_delivered_once_it_has_room(
    slurm: LocalSlurm, make_harness: HarnessFactory, small_disk: SmallDisk
) -> None:
    h = await make_harness(store_path=small_disk.mount / "provider.sqlite3", confirm_interval=1)
    ids = [new_ucloud_id() for _ in range(50)]
    small_disk.fill()
    try:
        response = await h.verify([job_body(i, "RUNNING") for i in ids])
        assert (response.status, await response.json()) == (200, {})
        await asyncio.sleep(4)  # passes fail meanwhile: nothing can be stored
        assert h.sync.last_report is not None and "full" in h.sync.last_report.error
        assert h.core.updates == []
    finally:
        small_disk.free()
    freed = time.monotonic()
    await wait_for(lambda: len({u["id"] for u in h.core.updates}) == 50, 60, interval=0.2)
    delivered = time.monotonic() - freed
    assert sorted(u["id"] for u in h.core.updates) == sorted(ids)  # each once
    assert {u["update"]["state"] for u in h.core.updates} == {"FAILURE"}
    print(f"\ndisk full during a verify of 50: 50 of 50 updates delivered {delivered:.1f} s after the disk had room")


# -- the identity rules, for real ---------------------------------------------------------------------


async def test_the_sweeper_cancels_only_its_own_untracked_jobs(
    slurm: LocalSlurm, make_harness: HarnessFactory
) -> None:
    """An intent for U is unsettled (a create died). Of the jobs named U, only the one with the daemon's
    comment, running as the daemon's user, is cancelled."""
    h = await make_harness(confirm_interval=1, missing_window=5)
    ucloud_id = new_ucloud_id()
    h.store.record_intent(ucloud_id, None, int(time.time() * 1000))
    foreign = slurm.sbatch("sleep 600", name=ucloud_id, extra=("--comment=not from UCloud",))
    named_only = slurm.sbatch("sleep 600", name=new_ucloud_id())  # our comment, no intent for its name
    ours = slurm.sbatch("sleep 600", name=ucloud_id)
    h.client.app[SWEEPER].wake()
    await wait_for(lambda: slurm.state(ours) == "CANCELLED", 30)
    await asyncio.sleep(3)  # more sweeps: the others must survive them
    assert slurm.state(foreign) in ("RUNNING", "PENDING") and slurm.state(named_only) in ("RUNNING", "PENDING")
    slurm.run("scancel", foreign, named_only)


# -- the daemon killed between sbatch and commit --------------------------------------------------------


@pytest.fixture
async def core(aiohttp_server: Any, keys: DevCoreKeys) -> AsyncIterator[tuple[DevCore, str]]:
    devcore = DevCore(keys, PROVIDER_ID)
    server: TestServer = await aiohttp_server(devcore.make_app(), host="127.0.0.1")
    yield devcore, str(server.make_url("")).rstrip("/")


def daemon_config(path: Path, keys: DevCoreKeys, core_url: str, store: Path, sections: dict[str, Any]) -> int:
    port = unused_port()
    app = sections["applications"][0]
    product = sections["products"][0]
    jobs = sections["jobs"]
    slurm = sections["slurm"]
    path.write_text(
        f"""
[provider]
id = "{PROVIDER_ID}"
[server]
port = {port}
[ucloud]
url = "{core_url}"
public_key_file = "{keys.public_key_file}"
refresh_token_file = "{keys.refresh_token_file}"
[slurm]
backend = "cli"
conf = "{slurm['conf']}"
bin_dir = "{slurm['bin_dir']}"
[store]
path = "{store}"
[reconcile]
interval = 2
confirm_interval = 1
missing_window = 5
[jobs]
directory = "{jobs['directory']}"
submit_timeout = {jobs['submit_timeout']}
[[products]]
id = "{product['id']}"
category = "{product['category']}"
partition = "{product['partition']}"
[[applications]]
name = "{app['name']}"
script = "{app['script']}"
[applications.parameters]
seconds = {{ type = "integer", optional = true }}
[logging]
format = "json"
level = "debug"
"""
    )
    return port


async def test_the_daemon_killed_between_sbatch_and_commit_leaves_no_orphan(
    slurm: LocalSlurm,
    keys: DevCoreKeys,
    core: tuple[DevCore, str],
    app_script: Path,
    tmp_path: Path,
    held_sbatch: Path,
) -> None:
    _devcore, core_url = core
    config, store, log = tmp_path / "provider.toml", tmp_path / "state" / "provider.sqlite3", tmp_path / "daemon.log"
    port = daemon_config(config, keys, core_url, store, held_sections(app_script, tmp_path, held_sbatch, slurm))
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "provider", "serve", "--config", str(config)],
            stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )

    async def healthy() -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    daemon = start()
    try:
        for _ in range(100):
            if await healthy():
                break
            await asyncio.sleep(0.2)
        job = new_job(seconds=600)
        job["specification"]["parameters"] = {"seconds": {"type": "integer", "value": 600}}

        async def create() -> Any:
            async with aiohttp.ClientSession() as session:
                return await call_provider(session, url, f"/ucloud/{PROVIDER_ID}/jobs", keys, {"items": [job]})

        request = asyncio.ensure_future(create())
        await wait_for(lambda: (held_sbatch / "submitted").exists(), 60)
        slurm_id, wrapper_pid = (held_sbatch / "submitted").read_text().split()
        slurm.submitted.append(slurm_id)
        daemon.send_signal(signal.SIGKILL)  # sbatch has answered Slurm; the daemon has not committed
        daemon.wait(30)
        os.kill(int(wrapper_pid), signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await request  # Core got no answer
        assert slurm.state(slurm_id) in ("PENDING", "RUNNING")  # the orphan, for now
        db = Store(store)
        assert db.get([job["id"]]) == {} and [i.ucloud_id for i in db.intents()] == [job["id"]]
        db.close()

        restarted = time.monotonic()
        daemon = start()
        await wait_for(lambda: slurm.state(slurm_id) == "CANCELLED", 60, interval=0.2)
        cancelled = time.monotonic() - restarted
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        (event,) = [e for e in events if e["event"] == "sweeper.orphan_cancelled"]
        assert event["ucloud_id"] == job["id"] and event["slurm_ids"] == [slurm_id]
        print(f"\nSIGKILL between sbatch and commit: the orphan was cancelled {cancelled:.1f} s after the restart")
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)


async def test_a_create_given_the_id_of_an_old_tracked_job_is_accepted(
    slurm: LocalSlurm, make_harness: HarnessFactory, app_script: Path, tmp_path: Path
) -> None:
    """A wiped slurmctld starts again at 1: a new job may get the id of a job still tracked as active.
    They are two jobs (the names differ): the create succeeds and neither is cancelled."""
    h = await make_harness(sections=provider_sections(app_script, tmp_path))
    first = new_job(seconds=600)
    status, answer = await h.call("jobs", {"items": [first]})
    assert status == 200, answer
    first_id = answer["responses"][0]["id"].split("/")[1]
    slurm.submitted.append(first_id)
    stale = new_ucloud_id()
    h.track(stale, str(int(first_id) + 1))  # as if tracked before the wipe, under the id Slurm gives next
    second = new_job(seconds=600)
    status, answer = await h.call("jobs", {"items": [second]})
    assert status == 200, answer
    second_id = answer["responses"][0]["id"].split("/")[1]
    slurm.submitted.append(second_id)
    assert second_id == str(int(first_id) + 1)  # the collision really happened
    await asyncio.sleep(2)
    assert slurm.state(first_id) in ("PENDING", "RUNNING") and slurm.state(second_id) in ("PENDING", "RUNNING")
    assert h.store.get([second["id"]])[second["id"]].slurm_id == second_id
    slurm.run("scancel", first_id, second_id)
