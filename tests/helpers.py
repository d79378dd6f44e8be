"""What tests share besides fixtures: the local Slurm cluster, the daemon harness, the test settings.

A module of its own (not conftest.py, which pytest imports in its own way) so tests import from it
plainly: ``from helpers import HarnessFactory, wait_for``. The fixtures that build these live in
conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import structlog.testing
from aiohttp.test_utils import TestClient

from provider.appkeys import STORE, SYNC
from provider.config import Settings, settings_from_dict
from provider.slurm.types import FINISHED_BASE_STATES
from provider.store import Store
from provider.sync import Synchronizer
from provider.ucloud.devcore import DevCore, DevCoreKeys, call_provider
from provider.ucloud.models import JobState

REPO = Path(__file__).resolve().parent.parent


LOCAL_SLURM = REPO / "deploy" / "local-slurm"


PROVIDER_ID = "slurm"


@dataclass
class LocalSlurm:
    """The single-host cluster of deploy/local-slurm, and the commands tests use to drive it."""

    directory: Path
    conf: str
    min_job_age: int
    extra_env: dict[str, str] = field(default_factory=dict)  # the SLURM_LOCAL_* settings of this cluster
    submitted: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env, "SLURM_CONF": self.conf}

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, check=check, timeout=timeout)

    def sbatch(self, script: str, *, name: str, time_limit: str = "10", extra: tuple[str, ...] = ()) -> str:
        """Submit ``script`` (a bash body) as a real batch job; returns its Slurm id."""
        body = "#!/bin/bash\n" + script + "\n"
        done = subprocess.run(
            ["sbatch", "--parsable", f"--job-name={name}", "--comment=UCloud job", "--output=/dev/null",
             f"--time={time_limit}", *extra],
            env=self.env(), input=body, capture_output=True, text=True, check=True, timeout=60,
        )
        slurm_id = done.stdout.strip().split(";")[0]
        assert slurm_id.isdigit(), done.stdout
        self.submitted.append(slurm_id)
        return slurm_id

    def state(self, slurm_id: str) -> str:
        """The job's state as squeue (or, once purged there, sacct) shows it; for an array, the state of
        a task that has not finished yet, if any."""
        out = self.run("squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T", check=False).stdout.split()
        if not out:
            rows = self.run("sacct", "-n", "-P", "-X", "-j", slurm_id, "-o", "State", check=False).stdout.splitlines()
            out = [row.split()[0] for row in rows if row.strip()]
        if not out:
            return ""
        return next((state for state in out if state not in FINISHED_BASE_STATES), out[0])

    def wait_state(self, slurm_id: str, states: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(slurm_id)
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(f"Slurm job {slurm_id} did not reach {states} within {timeout} s (last: {state!r})")

    ctl_command: list[str] = field(default_factory=lambda: [str(LOCAL_SLURM / "ctl.sh")])

    def ctl(self, daemon: str, action: str) -> None:
        """Stop or start one daemon (fault injection): ``ctl.sh slurmctld stop`` and the like."""
        if not self.ctl_command:
            pytest.skip("this external cluster has no PROVIDER_TEST_SLURM_CTL to stop and start its daemons")
        subprocess.run([*self.ctl_command, daemon, action], env=self.env(), check=True, timeout=300, capture_output=True)

    def add_users(self, *names: str) -> None:
        """Give the cluster's nodes these users of this host (login node), as a site's directory service
        does: ``ctl.sh user NAME...`` (the single-host cluster has them already)."""
        if not self.ctl_command:
            pytest.skip("this external cluster has no PROVIDER_TEST_SLURM_CTL to give its nodes this host's users")
        subprocess.run([*self.ctl_command, "user", *names], env=self.env(), check=True, timeout=120, capture_output=True)


# A folder the cluster's nodes see at the same path as this host (the job folders' file system):
# /tmp on the single-host cluster, the shared folder of the compose cluster (deploy/docker/cluster.sh).
SHARED_TMP = Path(os.environ.get("PROVIDER_TEST_SHARED_DIR", "/tmp"))


# The test session's own cluster, beside (not instead of) a development cluster on the default ports.
TEST_CLUSTER = {
    "SLURM_LOCAL_DIR": "/tmp/ucloud-slurm-test",
    "SLURM_LOCAL_CLUSTER": "ucloudtest",
    "SLURM_LOCAL_CTLD_PORT": "6917",
    "SLURM_LOCAL_SLURMD_PORT": "6918",
    "SLURM_LOCAL_DBD_PORT": "6919",
    "SLURM_LOCAL_DB_PORT": "3407",
    "SLURM_LOCAL_MIN_JOB_AGE": "30",
    "SLURM_LOCAL_NODES": "2",  # jobs that span nodes (tests/test_multinode_slurm.py)
}


def min_job_age(env: dict[str, str]) -> int:
    out = subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^MinJobAge\s*=\s*(\d+)", out, re.M)
    return int(match.group(1)) if match else 300


def new_ucloud_id() -> str:
    return str(int(uuid.uuid4().int % 10**9))


@dataclass
class Harness:
    """The daemon over real HTTP on loopback, with the stand-in Core it talks to."""

    client: TestClient
    core: DevCore
    core_url: str
    keys: DevCoreKeys
    backend: Any  # a SlurmBackend; tests read its call counters
    settings: Settings

    @property
    def store(self) -> Store:
        return self.client.app[STORE]  # type: ignore[index]

    @property
    def sync(self) -> Synchronizer:
        return self.client.app[SYNC]  # type: ignore[index]

    async def verify(self, jobs: list[dict[str, Any]] | bytes, *, token: str | None = None) -> aiohttp.ClientResponse:
        body = jobs if isinstance(jobs, bytes) else json.dumps({"items": jobs}).encode()
        token = token or self.keys.service_token()
        return await self.client.post(
            f"/ucloud/{PROVIDER_ID}/jobs/verify",
            data=body,
            headers={"Authorization": f"Bearer {token}"},
            skip_auto_headers=["Content-Type"],
        )

    async def call(
        self, operation: str, body: dict[str, Any] | None = None, *, username: str | None = "user", method: str = "POST"
    ) -> tuple[int, Any]:
        """Call ``/ucloud/<id>/<operation>`` as Core does, on behalf of ``username``."""
        return await call_provider(
            self.session, str(self.client.make_url("")).rstrip("/"), f"/ucloud/{PROVIDER_ID}/{operation}",
            self.keys, body, username=username, method=method,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.client.session

    def track(
        self,
        ucloud_id: str,
        slurm_id: str,
        *,
        name: str | None = None,
        age_s: float = 3600,
        state: JobState = JobState.IN_QUEUE,
    ) -> None:
        now = int(time.time() * 1000)
        self.store.track(
            ucloud_id=ucloud_id,
            slurm_id=slurm_id,
            cluster="",
            expected_name=ucloud_id if name is None else name,
            submitted_at=now - int(age_s * 1000),
            now=now,
            state=state,
        )

    async def settled(self, timeout: float = 60) -> None:
        """Wait until no pass is pending and the outbox is empty (or cannot drain)."""
        await wait_for(lambda: self.sync.idle, timeout)
        await wait_for(lambda: self.store.outbox_stats().depth == 0, timeout)

    async def updates_for(self, ucloud_id: str, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        await wait_for(lambda: len(self.core.updates_for(ucloud_id)) >= count, timeout)
        return self.core.updates_for(ucloud_id)


async def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def daemon_settings(
    keys: DevCoreKeys, core_url: str, store_path: Path, sections: dict[str, Any] | None = None, **reconcile: Any
) -> Settings:
    return settings_from_dict(
        {
            **(sections or {}),
            "provider": {"id": PROVIDER_ID},
            "ucloud": {
                "url": core_url,
                "public_key_file": str(keys.public_key_file),
                "refresh_token_file": str(keys.refresh_token_file),
                "timeout": 5,
            },
            "slurm": {
                "backend": "cli",
                "conf": os.environ.get("SLURM_CONF", ""),
                "query_timeout": 20,
                **(sections or {}).get("slurm", {}),
            },
            "store": {"path": str(store_path)},
            "reconcile": {
                "interval": 3600,  # tests of verify must not be helped by the monitor
                "unknown_job_grace": 60,
                "missing_checks": 3,
                "missing_window": 2,
                "missing_min_age": 0,
                "confirm_interval": 1,
                "outbox_max_backoff": 1,
                **reconcile,
            },
            "logging": {"level": "debug"},
        },
        source="test settings",
    )


HarnessFactory = Callable[..., Awaitable[Harness]]


@contextlib.contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log event, whatever level an earlier test configured (structlog.testing.capture_logs
    swaps the processors only; the level filter stays the configured one)."""
    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=previous)
