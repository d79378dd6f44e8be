"""The durable state: the job map (UCloud id <-> Slurm id) and the outbox of updates for Core, in SQLite.

Every update for Core is written in the same transaction as the state change that caused it, so a crash
can lose neither. The class is synchronous (the CLI uses it directly); the daemon calls it through
``asyncio.to_thread`` so the event loop never waits on the disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider.reconcile import Decision, TrackedJob
from provider.ucloud.models import FINAL_STATES, JobState, JobUpdate

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    ucloud_id       TEXT PRIMARY KEY,
    slurm_id        TEXT NOT NULL,
    cluster         TEXT NOT NULL DEFAULT '',
    expected_name   TEXT,
    unix_user       TEXT,
    submitted_at    INTEGER NOT NULL,
    tracked_at      INTEGER NOT NULL,
    state           TEXT NOT NULL,
    status          TEXT,
    slurm_state     TEXT,
    miss_count      INTEGER NOT NULL DEFAULT 0,
    first_missed_at INTEGER,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_slurm_id ON jobs (slurm_id, cluster);
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    ucloud_id   TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_by_job ON outbox (ucloud_id);
"""

_FINAL = tuple(s.value for s in FINAL_STATES)


class StoreError(Exception):
    """A request the store refuses (an id already tracked, a Slurm id in use); the message says which."""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    ucloud_id: str
    update: dict[str, Any]
    created_at: int
    attempts: int


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    oldest_created_at: int | None


class Store:
    """The job map and the outbox in one SQLite file (WAL, so readers never block the writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer ucloud-slurm-provider (schema {version} > {SCHEMA_VERSION})"
            )
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- the job map -------------------------------------------------------------------------------

    def track(
        self,
        *,
        ucloud_id: str,
        slurm_id: str,
        cluster: str,
        expected_name: str | None,
        submitted_at: int,
        now: int,
        state: JobState = JobState.IN_QUEUE,
        unix_user: str | None = None,
        updates: Iterable[JobUpdate] = (),
    ) -> TrackedJob:
        """Start tracking a job, and queue ``updates`` for Core in the same transaction."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE ucloud_id = ?", (ucloud_id,)).fetchone():
                raise StoreError(f"UCloud job {ucloud_id} is already tracked")
            other = db.execute(
                "SELECT ucloud_id FROM jobs WHERE slurm_id = ? AND cluster = ? AND state NOT IN (?, ?, ?)",
                (slurm_id, cluster, *_FINAL),
            ).fetchone()
            if other:
                raise StoreError(f"Slurm job {slurm_id} is already tracked for UCloud job {other['ucloud_id']}")
            db.execute(
                "INSERT INTO jobs (ucloud_id, slurm_id, cluster, expected_name, unix_user, submitted_at, tracked_at,"
                " state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ucloud_id, slurm_id, cluster, expected_name, unix_user, submitted_at, now, state.value, now),
            )
            for update in updates:
                self._enqueue(db, ucloud_id, update, now)
        return TrackedJob(ucloud_id, slurm_id, cluster, expected_name, submitted_at, state, unix_user=unix_user)

    def untrack(self, ucloud_id: str) -> bool:
        """Forget a job (and any update still queued for it). True if it was tracked."""
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE ucloud_id = ?", (ucloud_id,))
            return db.execute("DELETE FROM jobs WHERE ucloud_id = ?", (ucloud_id,)).rowcount > 0

    def get(self, ucloud_ids: Iterable[str]) -> dict[str, TrackedJob]:
        ids = list(dict.fromkeys(ucloud_ids))
        found: dict[str, TrackedJob] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT * FROM jobs WHERE ucloud_id IN ({marks})", chunk):
                found[row["ucloud_id"]] = _job(row)
        return found

    def active(self) -> list[TrackedJob]:
        """Every job whose final state Core has not been told yet."""
        rows = self._query("SELECT * FROM jobs WHERE state NOT IN (?, ?, ?) ORDER BY tracked_at", _FINAL)
        return [_job(r) for r in rows]

    def all_jobs(self) -> list[TrackedJob]:
        return [_job(r) for r in self._query("SELECT * FROM jobs ORDER BY tracked_at")]

    def apply(self, decisions: Iterable[Decision], now: int) -> int:
        """Store the new rows and queue the updates of ``decisions`` atomically. Returns updates queued.

        An update identical in state and status to one still waiting for Core is not queued twice.
        """
        queued = 0
        with self._transaction() as db:
            for decision in decisions:
                job = decision.tracked
                if job is not None:
                    db.execute(
                        "UPDATE jobs SET state = ?, status = ?, slurm_state = ?, miss_count = ?,"
                        " first_missed_at = ?, updated_at = ? WHERE ucloud_id = ?",
                        (
                            job.state.value,
                            job.status,
                            job.slurm_state,
                            job.miss_count,
                            job.first_missed_at,
                            now,
                            job.ucloud_id,
                        ),
                    )
                if decision.update is not None and not self._pending_same(db, decision.ucloud_id, decision.update):
                    self._enqueue(db, decision.ucloud_id, decision.update, now)
                    queued += 1
        return queued

    def enqueue(self, ucloud_id: str, update: JobUpdate, now: int) -> None:
        with self._transaction() as db:
            self._enqueue(db, ucloud_id, update, now)

    @staticmethod
    def _enqueue(db: sqlite3.Connection, ucloud_id: str, update: JobUpdate, now: int) -> None:
        body = json.dumps(update.to_wire(), separators=(",", ":"))
        db.execute("INSERT INTO outbox (ucloud_id, body, created_at) VALUES (?, ?, ?)", (ucloud_id, body, now))

    @staticmethod
    def _pending_same(db: sqlite3.Connection, ucloud_id: str, update: JobUpdate) -> bool:
        for (body,) in db.execute("SELECT body FROM outbox WHERE ucloud_id = ?", (ucloud_id,)):
            pending = json.loads(body)
            if pending.get("state") == (update.state.value if update.state else None) and pending.get(
                "status"
            ) == update.status:
                return True
        return False

    # -- the outbox ---------------------------------------------------------------------------------

    def outbox_peek(self, limit: int) -> list[OutboxItem]:
        rows = self._query("SELECT * FROM outbox ORDER BY seq LIMIT ?", (limit,))
        return [
            OutboxItem(r["seq"], r["ucloud_id"], json.loads(r["body"]), r["created_at"], r["attempts"]) for r in rows
        ]

    def outbox_done(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        with self._transaction() as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def outbox_failed(self, seqs: Iterable[int], error: str) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                [(error[:1000], s) for s in seqs],
            )

    def count_by_state(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        self._query("SELECT 1")

    def outbox_stats(self) -> OutboxStats:
        row = self._query("SELECT COUNT(*) AS depth, MIN(created_at) AS oldest FROM outbox")[0]
        return OutboxStats(row["depth"], row["oldest"])


def _job(row: sqlite3.Row) -> TrackedJob:
    return TrackedJob(
        ucloud_id=row["ucloud_id"],
        slurm_id=row["slurm_id"],
        cluster=row["cluster"],
        expected_name=row["expected_name"],
        submitted_at=row["submitted_at"],
        state=JobState(row["state"]),
        status=row["status"],
        slurm_state=row["slurm_state"],
        miss_count=row["miss_count"],
        first_missed_at=row["first_missed_at"],
        unix_user=row["unix_user"],
    )
