"""Fixtures that build real things: a local Slurm cluster, signed tokens, a strict stand-in Core, the daemon.

The classes and functions behind them are in helpers.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from helpers import (
    LOCAL_SLURM,
    PROVIDER_ID,
    TEST_CLUSTER,
    Harness,
    HarnessFactory,
    LocalSlurm,
    daemon_settings,
    min_job_age,
    wait_for,
)
from provider.slurm.commands import CommandBackend
from provider.ucloud.devcore import DevCore, DevCoreKeys
from provider.web import make_app


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the real Slurm (directly or through another fixture) is marked ``slurm``,
    so ``pytest -m "not slurm"`` runs the pure and in-process tests alone, without starting a cluster."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm() -> Iterator[LocalSlurm]:
    """A real Slurm (slurmctld, slurmd, slurmdbd, MariaDB, munge), started for the session if not up.

    PROVIDER_TEST_SLURM_CONF points the tests at a cluster that runs already, this host being its login
    node (the compose cluster of deploy/docker, another Slurm version): the tests neither start nor
    stop it. PROVIDER_TEST_SLURM_CTL is its control channel, a command taking ``<daemon> <action>``
    (fault injection) and ``user NAME...`` (deploy/docker/ctl.sh); PROVIDER_TEST_SHARED_DIR a folder
    its nodes see at the same path (pytest's --basetemp goes inside it).
    """
    external = os.environ.get("PROVIDER_TEST_SLURM_CONF")
    if external:
        env = {**os.environ, "SLURM_CONF": external}
        ctl = os.environ.get("PROVIDER_TEST_SLURM_CTL", "")
        os.environ["SLURM_CONF"] = external
        yield LocalSlurm(Path(external).parent, external, min_job_age(env), ctl_command=ctl.split() if ctl else [])
        return
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster runs as root: run the suite as root (deploy/test.sh)")
    missing = [b for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd") if not shutil.which(b)]
    if missing:
        pytest.skip(f"Slurm packages are not installed ({', '.join(missing)}): run deploy/local-slurm/install-packages.sh")
    settings = {key: os.environ.get(key, default) for key, default in TEST_CLUSTER.items()}
    directory = Path(settings["SLURM_LOCAL_DIR"])
    conf = str(directory / "etc" / "slurm.conf")
    env = {**os.environ, **settings, "SLURM_CONF": conf}
    was_up = (
        Path(conf).exists()
        and subprocess.run(["scontrol", "ping"], env=env, capture_output=True, timeout=60).returncode == 0
    )
    subprocess.run([str(LOCAL_SLURM / "start.sh")], env=env, check=True, timeout=600)
    cluster = LocalSlurm(directory, conf, min_job_age(env), extra_env=settings)
    os.environ["SLURM_CONF"] = conf
    yield cluster
    if cluster.submitted:
        subprocess.run(["scancel", *cluster.submitted], env=cluster.env(), capture_output=True, check=False)
    if not was_up and os.environ.get("SLURM_TEST_KEEP") != "1":
        subprocess.run([str(LOCAL_SLURM / "stop.sh")], env=env, check=False, timeout=300)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DevCoreKeys:
    """The provider's registration files, as UCloud hands them out, and Core's private key."""
    return DevCoreKeys.load_or_create(tmp_path_factory.mktemp("ucloud-keys"))


@pytest.fixture
async def make_harness(
    keys: DevCoreKeys, tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> AsyncIterator[HarnessFactory]:
    """Build a daemon (with its own store) and a stand-in Core; settings overrides go to ``[reconcile]``."""

    async def build(
        store_path: Path | None = None,
        core: DevCore | None = None,
        sections: dict[str, Any] | None = None,
        backend: Any = None,
        **reconcile: Any,
    ) -> Harness:
        core = core or DevCore(keys, PROVIDER_ID)
        server: TestServer = await aiohttp_server(core.make_app(), host="127.0.0.1")
        core_url = str(server.make_url("")).rstrip("/")
        settings = daemon_settings(keys, core_url, store_path or tmp_path / "provider.sqlite3", sections, **reconcile)
        backend = backend or CommandBackend(slurm_conf=settings.slurm.conf or None, timeout=settings.slurm.query_timeout)
        client = await aiohttp_client(make_app(settings, backend=backend), server_kwargs={"host": "127.0.0.1"})
        harness = Harness(client, core, core_url, keys, backend, settings)
        await wait_for(lambda: harness.sync.passes >= 1, 30)  # the monitor's start-up pass is behind us
        return harness

    yield build
