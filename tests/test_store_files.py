"""A bad store file at start: one line naming the file and what is wrong, exit 2, the file untouched.

Also: schema 1 files are migrated keeping their data, and a write that fails (a full disk) leaves the
store usable for the next one.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port

from provider.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreUnusable, expected_layout
from provider.ucloud.devcore import DevCoreKeys
from provider.ucloud.models import JobState, JobUpdate

pytestmark = pytest.mark.process


NOW = 1_800_000_000_000


def a_good_store(path: Path, jobs: int = 200) -> bytes:
    store = Store(path)
    for n in range(jobs):
        store.track(ucloud_id=str(n), slurm_id=str(n + 1), cluster="", expected_name=str(n), submitted_at=NOW, now=NOW)
    store.close()
    return path.read_bytes()


def schema_1_file(path: Path) -> None:
    """A store as version 1 of the daemon left it, with a job and a queued update."""
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO jobs (ucloud_id, slurm_id, cluster, expected_name, submitted_at, tracked_at, state, updated_at)"
        " VALUES ('7', '70', '', '7', 1, 1, 'RUNNING', 1)"
    )
    db.execute("INSERT INTO outbox (ucloud_id, body, created_at) VALUES ('7', '{\"state\":\"RUNNING\"}', 1)")
    db.commit()
    db.close()


def wrong_schema(path: Path, version: int, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute(sql)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


BadFile = Callable[[Path, Path], str]  # (where to write it, a good store to cut from) -> what the error says

BAD_FILES: dict[str, BadFile] = {
    "random bytes": lambda p, good: (p.write_bytes(os.urandom(8192)), "not an SQLite database")[1],
    "text": lambda p, good: (p.write_text("[store]\npath = 'x'\n" * 50), "not an SQLite database")[1],
    "truncated header": lambda p, good: (p.write_bytes(good.read_bytes()[:300]), "truncated")[1],
    "truncated halfway": lambda p, good: (p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "damaged")[1],
    "another program's database": lambda p, good: (wrong_schema(p, 0, "CREATE TABLE photos (id, blob)"),
                                                   "not a ucloud-slurm-provider store (it has tables photos)")[1],
    "wrong schema for its version": lambda p, good: (wrong_schema(p, 1, "CREATE TABLE jobs (id)"),
                                                     "says schema 1 but does not have it")[1],
    "newer schema": lambda p, good: (p.write_bytes(good.read_bytes()), wrong_schema(p, 99, "CREATE TABLE future (x)"),
                                     "written by a newer ucloud-slurm-provider (schema 99")[2],
}


@pytest.fixture
def good_store(tmp_path: Path) -> Path:
    path = tmp_path / "good" / "provider.sqlite3"
    path.parent.mkdir()
    a_good_store(path)
    # A copy without -wal/-shm beside it: what a file looks like after a clean stop.
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_file_is_refused_by_name_and_left_as_it_was(kind: str, tmp_path: Path, good_store: Path) -> None:
    path = tmp_path / "provider.sqlite3"
    says = BAD_FILES[kind](path, good_store)
    before = path.read_bytes()
    beside = sorted(os.listdir(tmp_path))
    with pytest.raises(StoreUnusable) as caught:
        Store(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message
    assert path.read_bytes() == before  # byte for byte
    assert sorted(os.listdir(tmp_path)) == beside  # and no -wal or -shm appeared beside it


def test_a_schema_1_store_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    schema_1_file(path)
    store = Store(path)
    assert store.get(["7"])["7"].state is JobState.RUNNING
    assert [i.ucloud_id for i in store.outbox_peek(10)] == ["7"]
    assert store.intents() == []
    store.record_intent("8", None, NOW)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= set(expected_layout(SCHEMA_VERSION))


def test_a_first_attempts_intent_is_settled_by_its_commit_a_retrys_is_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    store.record_intent("1", None, NOW)
    store.track(ucloud_id="1", slurm_id="10", cluster="", expected_name="1", submitted_at=NOW, now=NOW)
    assert store.intents() == []
    store.record_intent("2", "donna", NOW)  # a refused first try...
    store.record_intent("2", "donna", NOW + 5)  # ...and Core's retry
    store.track(ucloud_id="2", slurm_id="11", cluster="", expected_name="2", submitted_at=NOW, now=NOW)
    (kept,) = store.intents()
    assert (kept.ucloud_id, kept.attempts, kept.first_at, kept.last_at, kept.unix_user) == ("2", 2, NOW, NOW + 5, "donna")
    store.retire_intents(["2"])
    assert store.intents() == []


def test_a_write_that_fails_at_commit_leaves_the_store_usable(tmp_path: Path) -> None:
    """SQLite's own page limit stands in for a full disk here (the real one is in test_job_safety_slurm)."""
    store = Store(tmp_path / "s.sqlite3")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.enqueue("1", JobUpdate(status="x" * 100_000, timestamp=NOW), NOW)
    assert "full" in store.write_error
    store._db.execute(f"PRAGMA max_page_count = {pages + 1000}")
    store.probe_write(NOW)  # no transaction was left open by the failed one
    assert store.write_error == ""
    store.enqueue("1", JobUpdate(status="y", timestamp=NOW), NOW)
    assert store.outbox_stats().depth == 1


# -- the same through the command line and the daemon ------------------------------------------------


def config_for(tmp_path: Path, keys: DevCoreKeys, store: Path) -> Path:
    config = tmp_path / "provider.toml"
    config.write_text(
        f"""
[server]
port = {unused_port()}
[ucloud]
public_key_file = "{keys.public_key_file}"
refresh_token_file = "{keys.refresh_token_file}"
[slurm]
backend = "cli"
conf = "{os.environ.get('SLURM_CONF', '/nonexistent/slurm.conf')}"
[store]
path = "{store}"
[logging]
format = "json"
"""
    )
    return config


@pytest.mark.parametrize("command", ["serve", "jobs list", "verify --dry-run", "jobs untrack 5"])
@pytest.mark.parametrize("kind", ["text", "truncated halfway", "newer schema"])
def test_serve_and_the_admin_commands_say_one_line_and_exit_2(
    command: str, kind: str, tmp_path: Path, good_store: Path, keys: DevCoreKeys
) -> None:
    store = tmp_path / "state" / "provider.sqlite3"
    store.parent.mkdir()
    BAD_FILES[kind](store, good_store)
    digest = hashlib.sha256(store.read_bytes()).hexdigest()
    config = config_for(tmp_path, keys, store)
    words = command.split()
    argv = [sys.executable, "-m", "provider", *words[:2], "--config", str(config), *words[2:]]
    if words[0] == "verify":
        argv = [sys.executable, "-m", "provider", "verify", "--dry-run", "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    naming = [line for line in output.splitlines() if str(store) in line and line.startswith("error: ")]
    assert len(naming) == 1, output
    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest
