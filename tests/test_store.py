"""The SQLite store: the job map refuses contradictions; decisions and their updates land together."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from provider.reconcile import Decision, TrackedJob
from provider.store import Store, StoreError
from provider.ucloud.models import JobState, JobUpdate

NOW = 1_800_000_000_000


def tracked(store: Store, ucloud_id: str = "1", slurm_id: str = "41") -> None:
    store.track(ucloud_id=ucloud_id, slurm_id=slurm_id, cluster="c", expected_name=ucloud_id, submitted_at=NOW, now=NOW)


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    Store(tmp_path / "s.sqlite3").close()
    assert sqlite3.connect(tmp_path / "s.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_ucloud_id_is_tracked_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    tracked(store)
    with pytest.raises(StoreError, match="UCloud job 1 is already tracked"):
        tracked(store, "1", "42")


def test_an_active_slurm_job_maps_to_one_ucloud_job(tmp_path: Path) -> None:
    """The same Slurm job (same id, same name) cannot be tracked for a second UCloud job."""
    store = Store(tmp_path / "s.sqlite3")
    tracked(store, "1", "41")
    for name in ("1", None):
        with pytest.raises(StoreError, match="Slurm job 41 is already tracked for UCloud job 1"):
            store.track(ucloud_id="2", slurm_id="41", cluster="c", expected_name=name, submitted_at=NOW, now=NOW)


def test_a_reused_slurm_id_with_another_name_is_another_job(tmp_path: Path) -> None:
    """After a wiped slurmctld, a new job gets the id of an old one still tracked as active."""
    store = Store(tmp_path / "s.sqlite3")
    tracked(store, "1", "41")
    tracked(store, "2", "41")  # expected names "1" and "2": two different Slurm jobs
    assert {j.ucloud_id for j in store.active()} == {"1", "2"}


def test_decision_and_update_are_stored_together_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    tracked(store)
    job = store.get(["1"])["1"]

    update = JobUpdate(state=JobState.RUNNING, status="Your job is now running", expected_state=JobState.IN_QUEUE, timestamp=NOW)
    decision = Decision("1", "test", update=update, tracked=job._replace(state=JobState.RUNNING, status=update.status))
    assert store.apply([decision], NOW) == 1
    assert store.apply([decision], NOW) == 0  # the same update still waiting is not queued twice
    store.close()

    reopened = Store(path)
    assert reopened.get(["1"])["1"].state is JobState.RUNNING
    (item,) = reopened.outbox_peek(10)
    assert item.update == update.to_wire()
    assert reopened.active()[0].ucloud_id == "1"


def test_final_jobs_leave_the_active_set(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    tracked(store)
    job = store.get(["1"])["1"]
    store.apply([Decision("1", "done", tracked=job._replace(state=JobState.SUCCESS))], NOW)
    assert store.active() == [] and store.all_jobs()[0].state is JobState.SUCCESS


def test_has_active_says_whether_a_pass_must_ask_slurm(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    assert not store.has_active() and not store.has_active(["1"])
    tracked(store, "1", "41")
    tracked(store, "2", "42")
    job = store.get(["2"])["2"]
    store.apply([Decision("2", "done", tracked=job._replace(state=JobState.FAILURE), changed=True)], NOW)
    assert store.has_active() and store.has_active(["2", "1"])
    assert not store.has_active(["2", "never-tracked"]) and not store.has_active([])


def _as_the_file_has_them(path: Path) -> list[TrackedJob]:
    fresh = Store(path)
    try:
        return fresh.active()
    finally:
        fresh.close()


def test_the_active_jobs_kept_in_memory_follow_every_change_to_the_file(tmp_path: Path) -> None:
    """active() keeps the rows between passes; whatever changes the file, it answers as a fresh read."""
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    for n in range(1, 5):
        tracked(store, str(n), str(40 + n))
    first = store.active()
    again = store.active()
    assert [a is b for a, b in zip(first, again, strict=True)] == [True] * 4  # kept, not read again
    jobs = {job.ucloud_id: job for job in first}

    # the pass's own writes: a job changes, one turns final
    store.apply(
        [
            Decision("1", "runs", tracked=jobs["1"]._replace(state=JobState.RUNNING, slurm_state="RUNNING")),
            Decision("2", "done", tracked=jobs["2"]._replace(state=JobState.SUCCESS)),
        ],
        NOW,
    )
    assert store.active() == _as_the_file_has_them(path)
    assert [(j.ucloud_id, j.state) for j in store.active()] == [("1", JobState.RUNNING), ("3", JobState.IN_QUEUE), ("4", JobState.IN_QUEUE)]

    # another connection (an admin's command on the same file)
    other = Store(path)
    other.apply([Decision("3", "gone", tracked=jobs["3"]._replace(state=JobState.FAILURE))], NOW)
    other.untrack("4")
    other.close()
    assert [j.ucloud_id for j in store.active()] == ["1"] == [j.ucloud_id for j in _as_the_file_has_them(path)]
    assert store.has_active(["1"]) and not store.has_active(["3", "4"])

    # the store's other writes to the job map
    tracked(store, "5", "45")
    assert [j.ucloud_id for j in store.active()] == ["1", "5"]
    store.untrack("1")
    assert store.active() == _as_the_file_has_them(path) and [j.ucloud_id for j in store.active()] == ["5"]


class _CommitFails:
    """The store's connection, except that COMMIT fails as on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_failed_commit_leaves_the_active_jobs_as_the_file_has_them(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    tracked(store, "1", "41")
    (job,) = store.active()
    real = store._db
    store._db = _CommitFails(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.apply([Decision("1", "done", tracked=job._replace(state=JobState.SUCCESS))], NOW)
    store._db = real
    assert store.write_error == "database or disk is full"
    assert store.active() == _as_the_file_has_them(path) == [job]


def test_rows_read_share_the_name_when_it_is_the_ucloud_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    tracked(store, "7", "47")
    store.track(ucloud_id="8", slurm_id="48", cluster="c", expected_name="other", submitted_at=NOW, now=NOW)
    jobs = {job.ucloud_id: job for job in store.active()}
    assert jobs["7"].expected_name == "7" and jobs["8"].expected_name == "other"


def test_untrack_forgets_the_job_and_its_queued_updates(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    tracked(store)
    store.enqueue("1", JobUpdate(status="hello", timestamp=NOW), NOW)
    assert store.untrack("1") and not store.untrack("1")
    assert store.outbox_stats().depth == 0 and store.all_jobs() == []


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer ucloud-slurm-provider"):
        Store(path)
