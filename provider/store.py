"""The durable state: the job map (UCloud id <-> Slurm id) and the outbox of updates for Core, in SQLite.

Every update for Core is written in the same transaction as the state change that caused it, so a crash
can lose neither. The class is synchronous (the CLI uses it directly); the daemon calls it through
``asyncio.to_thread`` so the event loop never waits on the disk.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider.accounting import JobUsage, Owner, TotalChange, UsageSubject, next_total
from provider.collector import without_collector
from provider.reconcile import Decision, TrackedJob
from provider.ucloud.models import FINAL_STATES, JobState, JobUpdate

# Each entry takes the store from version n to n + 1 (``PRAGMA user_version``), in one transaction.
# Append only: a released migration never changes, so every older file reaches the same schema.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the job map and the outbox
        """CREATE TABLE IF NOT EXISTS jobs (
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
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state)",
        "CREATE INDEX IF NOT EXISTS jobs_by_slurm_id ON jobs (slurm_id, cluster)",
        """CREATE TABLE IF NOT EXISTS outbox (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            ucloud_id   TEXT NOT NULL,
            body        TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            last_error  TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS outbox_by_job ON outbox (ucloud_id)",
    ),
    (  # 2: submit intents (written before sbatch, so no Slurm job can exist that the store never heard of)
        """CREATE TABLE intents (
            ucloud_id   TEXT PRIMARY KEY,
            unix_user   TEXT,
            first_at    INTEGER NOT NULL,
            last_at     INTEGER NOT NULL,
            attempts    INTEGER NOT NULL
        )""",
        "CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)",
    ),
    (  # 3: usage accounting
        # usage_meta.epoch: a random id made once per database; it names the scope of every usage report,
        #   so a lost database starts new scopes at 0 in Core instead of lowering the old ones.
        # usage_jobs: whom each job charges and what it has used so far (resource-seconds, never
        #   decreasing); final = sacct's last word is in (the job is never asked about again).
        # usage_totals: the absolute total per (owner, category) and what Core last answered for it.
        # usage_outbox: the latest total still to be sent, one row per (owner, category): a newer absolute
        #   total replaces an older one waiting.
        """CREATE TABLE usage_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        "INSERT OR IGNORE INTO usage_meta (key, value) VALUES ('epoch', lower(hex(randomblob(8))))",
        """CREATE TABLE usage_jobs (
            ucloud_id        TEXT PRIMARY KEY,
            owner_type       TEXT NOT NULL,
            owner            TEXT NOT NULL,
            category         TEXT NOT NULL,
            product          TEXT NOT NULL,
            elapsed_s        INTEGER NOT NULL DEFAULT 0,
            resource_seconds INTEGER NOT NULL DEFAULT 0,
            final            INTEGER NOT NULL DEFAULT 0,
            held_since       INTEGER,
            updated_at       INTEGER NOT NULL
        )""",
        "CREATE INDEX usage_jobs_open ON usage_jobs (final)",
        "CREATE INDEX usage_jobs_by_owner ON usage_jobs (owner_type, owner, category)",
        """CREATE TABLE usage_totals (
            owner_type     TEXT NOT NULL,
            owner          TEXT NOT NULL,
            category       TEXT NOT NULL,
            total          INTEGER NOT NULL,
            computed_at    INTEGER NOT NULL,
            reported_total INTEGER,
            reported_at    INTEGER,
            core_answer    TEXT,
            answered_at    INTEGER,
            PRIMARY KEY (owner_type, owner, category)
        )""",
        """CREATE TABLE usage_outbox (
            owner_type TEXT NOT NULL,
            owner      TEXT NOT NULL,
            category   TEXT NOT NULL,
            total      INTEGER NOT NULL,
            queued_at  INTEGER NOT NULL,
            attempts   INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            PRIMARY KEY (owner_type, owner, category)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_SQLITE_HEADER = b"SQLite format 3\x00"

_FINAL = tuple(s.value for s in FINAL_STATES)


class StoreError(Exception):
    """A request the store refuses (an id already tracked, a Slurm id in use); the message says which."""


class StoreUnusable(StoreError):
    """The store file cannot be used (not SQLite, damaged, another schema); the message names the file.

    Raised before anything is written: the file is left exactly as it was found.
    """


@dataclass(frozen=True)
class Intent:
    """A create that ran (or was about to run) sbatch and has not been settled: the Slurm job it may have
    made is named ``ucloud_id``. Kept until the sweeper has seen no such job it must cancel."""

    ucloud_id: str
    unix_user: str | None
    first_at: int
    last_at: int  # ms; the latest attempt's start
    attempts: int


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
        self.write_error = ""  # why the latest write failed ("" = it worked); /readyz reports it
        version = 0
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            version = inspect_file(Path(self.path))  # raises StoreUnusable before anything is written
        self._lock = threading.Lock()
        self._active: dict[str, TrackedJob] | None = None  # see active()
        self._active_version = -1
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                with self._transaction() as db:
                    for statement in MIGRATIONS[target - 1]:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {target}")
        except sqlite3.Error as exc:
            raise StoreUnusable(f"{self.path}: cannot be opened for writing: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def rows_written(self) -> int:
        """Rows inserted, updated or deleted through this store since it was opened (bench/ reads it)."""
        return self._db.total_changes

    @contextmanager
    def _transaction(self, *, job_map: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. A failed COMMIT (a full disk) is rolled back too, so the connection
        never stays inside a transaction that every later write would trip over.

        ``job_map=False`` promises that the transaction writes no row of ``jobs`` (``apply`` keeps the
        active jobs current itself); any other forgets the active jobs kept in memory (``active()``),
        and so does every transaction that fails: the next read loads them again."""
        with self._lock:
            if job_map:
                self._active = None
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                finally:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
            except BaseException as exc:
                self._active = None
                if isinstance(exc, sqlite3.OperationalError):
                    self.write_error = str(exc)
                raise
            self.write_error = ""

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
        charges: UsageSubject | None = None,
    ) -> TrackedJob:
        """Start tracking a job, and queue ``updates`` for Core in the same transaction; ``charges``
        records (in the same transaction) whom the job's usage is charged to."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE ucloud_id = ?", (ucloud_id,)).fetchone():
                raise StoreError(f"UCloud job {ucloud_id} is already tracked")
            # One Slurm job, one UCloud job. A row whose expected name differs is another Slurm job that
            # once had this id (a wiped slurmctld starts again at 1): the reconciler is retiring it.
            other = db.execute(
                "SELECT ucloud_id FROM jobs WHERE slurm_id = ? AND cluster = ? AND state NOT IN (?, ?, ?)"
                " AND (expected_name IS NULL OR ? IS NULL OR expected_name = ?)",
                (slurm_id, cluster, *_FINAL, expected_name, expected_name),
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
            # A first attempt is settled by this commit. After earlier attempts that were refused, one of
            # them may still have a Slurm job under this name: the sweeper keeps watching for it.
            db.execute("DELETE FROM intents WHERE ucloud_id = ? AND attempts <= 1", (ucloud_id,))
            if charges is not None:
                db.execute(
                    "INSERT OR IGNORE INTO usage_jobs (ucloud_id, owner_type, owner, category, product, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (ucloud_id, charges.owner.kind, charges.owner.reference, charges.category, charges.product, now),
                )
        return TrackedJob(ucloud_id, slurm_id, cluster, expected_name, submitted_at, state, unix_user=unix_user)

    def untrack(self, ucloud_id: str) -> bool:
        """Forget a job (and any update still queued for it). True if it was tracked."""
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE ucloud_id = ?", (ucloud_id,))
            return db.execute("DELETE FROM jobs WHERE ucloud_id = ?", (ucloud_id,)).rowcount > 0

    # -- submit intents ----------------------------------------------------------------------------

    def record_intent(self, ucloud_id: str, unix_user: str | None, now: int) -> Intent:
        """Note, before sbatch runs, that a Slurm job named ``ucloud_id`` may be about to exist."""
        with self._transaction(job_map=False) as db:
            db.execute(
                "INSERT INTO intents (ucloud_id, unix_user, first_at, last_at, attempts) VALUES (?, ?, ?, ?, 1)"
                " ON CONFLICT (ucloud_id) DO UPDATE SET last_at = excluded.last_at, attempts = attempts + 1",
                (ucloud_id, unix_user, now, now),
            )
            row = db.execute("SELECT * FROM intents WHERE ucloud_id = ?", (ucloud_id,)).fetchone()
        return _intent(row)

    def intents(self) -> list[Intent]:
        return [_intent(r) for r in self._query("SELECT * FROM intents ORDER BY first_at")]

    def retire_intents(self, ucloud_ids: Iterable[str]) -> None:
        """Forget settled intents: the sweeper found no Slurm job of theirs left to cancel."""
        with self._transaction(job_map=False) as db:
            db.executemany("DELETE FROM intents WHERE ucloud_id = ?", [(i,) for i in ucloud_ids])

    def probe_write(self, now: int) -> None:
        """Raise unless a write reaches the file now (one row rewritten: cheap enough for /readyz)."""
        with self._transaction(job_map=False) as db:
            db.execute(
                "INSERT INTO write_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                (now,),
            )

    @without_collector  # thousands of rows a pass, no cycles (provider.collector)
    def get(self, ucloud_ids: Iterable[str]) -> dict[str, TrackedJob]:
        """The tracked rows of these jobs (one query, whatever their number)."""
        ids = json.dumps(list(dict.fromkeys(ucloud_ids)))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE ucloud_id IN (SELECT value FROM json_each(?))", (ids,)
            )
            rows.row_factory = None  # plain tuples: a pass reads thousands of rows
            return {row[0]: _job_from_tuple(row) for row in rows}

    def active(self) -> list[TrackedJob]:
        """Every job whose final state Core has not been told yet, in the order they were tracked.

        The rows are kept in memory between passes: every monitor pass asks for all of them, and in
        most passes few or none changed. ``apply`` keeps them current; any other write to the job map
        forgets them, and so does a commit by another connection (``PRAGMA data_version``: an admin's
        command on the same file). The rows are immutable, so the same objects serve every pass."""
        with self._lock:
            return list(self._active_jobs().values())

    def has_active(self, ucloud_ids: Iterable[str] | None = None) -> bool:
        """Whether any job (of ``ucloud_ids``, if given) is active; it stops at the first. A pass with
        none asks Slurm nothing. It never loads the active jobs itself: a pass asks this first so that
        squeue can run while they load."""
        with self._lock:
            active = self._current_active()
            if active is not None:
                return bool(active) if ucloud_ids is None else any(ucloud_id in active for ucloud_id in ucloud_ids)
        if ucloud_ids is None:
            return bool(self._query("SELECT 1 FROM jobs WHERE state NOT IN (?, ?, ?) LIMIT 1", _FINAL))
        ids = json.dumps(list(ucloud_ids))
        return bool(
            self._query(
                "SELECT 1 FROM jobs WHERE ucloud_id IN (SELECT value FROM json_each(?)) AND state NOT IN (?, ?, ?) LIMIT 1",
                (ids, *_FINAL),
            )
        )

    def _current_active(self) -> dict[str, TrackedJob] | None:
        """The kept active jobs if they are what the file holds, else None (hold the lock)."""
        if self._active is None or self._db.execute("PRAGMA data_version").fetchone()[0] != self._active_version:
            return None
        return self._active

    @without_collector  # thousands of rows, no cycles (provider.collector)
    def _active_jobs(self) -> dict[str, TrackedJob]:
        """The active jobs by id, read from the file only when they are not known current (hold the lock)."""
        active = self._current_active()
        if active is None:
            self._active_version = self._db.execute("PRAGMA data_version").fetchone()[0]
            rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state NOT IN (?, ?, ?) ORDER BY tracked_at", _FINAL)
            rows.row_factory = None
            active = self._active = {row[0]: _job_from_tuple(row) for row in rows}
        return active

    def all_jobs(self) -> list[TrackedJob]:
        return [_job(r) for r in self._query("SELECT * FROM jobs ORDER BY tracked_at")]

    @without_collector  # thousands of rows a pass, no cycles (provider.collector)
    def apply(self, decisions: Iterable[Decision], now: int) -> int:
        """Store the changed rows and queue the updates of ``decisions`` atomically. Returns updates queued.

        Only rows a decision changed are written (most jobs of most passes are as they were), and an
        update identical in state and status to one still waiting for Core is not queued twice.
        """
        changed: list[TrackedJob] = []
        updates: list[tuple[str, JobUpdate]] = []
        for decision in decisions:
            if decision.tracked is not None and decision.changed:
                changed.append(decision.tracked)
            if decision.update is not None:
                updates.append((decision.ucloud_id, decision.update))
        if not changed and not updates:
            return 0
        with self._transaction(job_map=False) as db:  # the kept active jobs are brought up to date below
            db.executemany(  # rows made as SQLite takes them, not held all at once
                "UPDATE jobs SET state = ?, status = ?, slurm_state = ?, miss_count = ?,"
                " first_missed_at = ?, updated_at = ? WHERE ucloud_id = ?",
                (
                    (job.state.value, job.status, job.slurm_state, job.miss_count, job.first_missed_at, now, job.ucloud_id)
                    for job in changed
                ),
            )
            waiting = self._waiting_updates(db, [ucloud_id for ucloud_id, _ in updates])
            fresh = [
                (ucloud_id, update)
                for ucloud_id, update in updates
                if ((update.state.value if update.state else None), update.status) not in waiting.get(ucloud_id, ())
            ]
            bodies: dict[int, str] = {}  # by id(): a pass shares one update among the jobs it finds alike
            db.executemany(
                "INSERT INTO outbox (ucloud_id, body, created_at) VALUES (?, ?, ?)",
                [
                    (ucloud_id, bodies.get(id(update)) or bodies.setdefault(id(update), _body(update)), now)
                    for ucloud_id, update in fresh
                ],
            )
            # Still inside the transaction: its COMMIT fails or this runs under the same lock.
            self._keep_active(changed)
        return len(fresh)

    def _keep_active(self, changed: list[TrackedJob]) -> None:
        """Bring the kept active jobs up to ``changed``, about to be committed (hold the lock). Were
        the COMMIT to fail, the kept jobs would be ahead of the file: they are forgotten then (see
        apply)."""
        active = self._active
        if active is None:
            return
        for job in changed:
            if job.state.is_final:
                active.pop(job.ucloud_id, None)
            elif job.ucloud_id in active:
                active[job.ucloud_id] = job
            else:  # not active when read: only a row that was never active can be missing
                self._active = None
                return

    @staticmethod
    def _waiting_updates(db: sqlite3.Connection, ucloud_ids: Sequence[str]) -> dict[str, set[tuple[str | None, str | None]]]:
        """(state, status) of the updates still waiting for Core, by job, for these jobs."""
        waiting: dict[str, set[tuple[str | None, str | None]]] = {}
        if not db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone():
            return waiting  # the usual case: Core is up and the outbox is empty
        for start in range(0, len(ucloud_ids), 500):
            chunk = ucloud_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for ucloud_id, body in db.execute(f"SELECT ucloud_id, body FROM outbox WHERE ucloud_id IN ({marks})", chunk):
                pending = json.loads(body)
                waiting.setdefault(ucloud_id, set()).add((pending.get("state"), pending.get("status")))
        return waiting

    def enqueue(self, ucloud_id: str, update: JobUpdate, now: int) -> None:
        with self._transaction(job_map=False) as db:
            self._enqueue(db, ucloud_id, update, now)

    @staticmethod
    def _enqueue(db: sqlite3.Connection, ucloud_id: str, update: JobUpdate, now: int) -> None:
        db.execute("INSERT INTO outbox (ucloud_id, body, created_at) VALUES (?, ?, ?)", (ucloud_id, _body(update), now))

    # -- the outbox ---------------------------------------------------------------------------------

    def outbox_peek(self, limit: int) -> list[OutboxItem]:
        rows = self._query("SELECT * FROM outbox ORDER BY seq LIMIT ?", (limit,))
        return [
            OutboxItem(r["seq"], r["ucloud_id"], json.loads(r["body"]), r["created_at"], r["attempts"]) for r in rows
        ]

    def outbox_done(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        with self._transaction(job_map=False) as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def outbox_failed(self, seqs: Iterable[int], error: str) -> None:
        with self._transaction(job_map=False) as db:
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

    # -- usage accounting ----------------------------------------------------------------------------

    def usage_epoch(self) -> str:
        return str(self._query("SELECT value FROM usage_meta WHERE key = 'epoch'")[0]["value"])

    def usage_open(self) -> list[tuple[JobUsage, bool]]:
        """Every job whose usage may still grow, with whether the job map holds it as finished."""
        rows = self._query(
            "SELECT u.*, j.slurm_id, j.expected_name, j.state FROM usage_jobs u JOIN jobs j USING (ucloud_id)"
            " WHERE u.final = 0"
        )
        return [(_usage(r), r["state"] in _FINAL) for r in rows]

    def usage_apply(
        self,
        changed: Iterable[JobUsage],
        total_of: Callable[[str, list[tuple[str, int]]], int | None],
        now: int,
    ) -> list[UsageTotalChange]:
        """Store jobs' new usage and, in the same transaction, the new totals of their (owner, category)
        and the reports for Core. ``total_of(category, [(product, resource-seconds), ...])`` prices a
        total (None: the category is not configured, nothing is reported)."""
        changes: list[UsageTotalChange] = []
        with self._transaction(job_map=False) as db:
            touched: dict[tuple[str, str, str], None] = {}
            for job in changed:
                db.execute(
                    "UPDATE usage_jobs SET elapsed_s = ?, resource_seconds = ?, final = ?, held_since = ?,"
                    " updated_at = ? WHERE ucloud_id = ?",
                    (job.elapsed_seconds, job.resource_seconds, int(job.final), job.held_since, now, job.ucloud_id),
                )
                touched[(job.owner.kind, job.owner.reference, job.category)] = None
            for kind, reference, category in touched:
                sums = db.execute(
                    "SELECT product, SUM(resource_seconds) AS rs FROM usage_jobs"
                    " WHERE owner_type = ? AND owner = ? AND category = ? GROUP BY product",
                    (kind, reference, category),
                ).fetchall()
                computed = total_of(category, [(r["product"], int(r["rs"])) for r in sums])
                if computed is None:
                    continue
                row = db.execute(
                    "SELECT total FROM usage_totals WHERE owner_type = ? AND owner = ? AND category = ?",
                    (kind, reference, category),
                ).fetchone()
                change = next_total(row["total"] if row else None, computed)
                owner = Owner(kind, reference)
                changes.append(UsageTotalChange(owner, category, change, computed))
                if not change.changed:
                    continue
                db.execute(
                    "INSERT INTO usage_totals (owner_type, owner, category, total, computed_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (owner_type, owner, category) DO UPDATE SET total = excluded.total,"
                    " computed_at = excluded.computed_at",
                    (kind, reference, category, change.total, now),
                )
                db.execute(
                    "INSERT INTO usage_outbox (owner_type, owner, category, total, queued_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (owner_type, owner, category) DO UPDATE SET total = excluded.total",
                    (kind, reference, category, change.total, now),
                )
        return changes

    def usage_requeue_refused(self, answered_before: int, now: int) -> int:
        """Queue again the totals Core refused before ``answered_before`` (a category registered only
        later, an owner Core did not know yet): a refusal must not lose a finished owner's usage."""
        with self._transaction(job_map=False) as db:
            return db.execute(
                "INSERT OR IGNORE INTO usage_outbox (owner_type, owner, category, total, queued_at)"
                " SELECT owner_type, owner, category, total, ? FROM usage_totals"
                " WHERE core_answer LIKE 'refused%' AND answered_at < ?",
                (now, answered_before),
            ).rowcount

    def usage_outbox_peek(self, limit: int) -> list[PendingUsage]:
        rows = self._query("SELECT * FROM usage_outbox ORDER BY queued_at, owner_type, owner, category LIMIT ?", (limit,))
        return [
            PendingUsage(Owner(r["owner_type"], r["owner"]), r["category"], r["total"], r["queued_at"], r["attempts"])
            for r in rows
        ]

    def usage_answered(self, answers: Iterable[tuple[PendingUsage, str]], now: int) -> None:
        """Core took these reports (``"true"``/``"false"``) or refused them for good (``"refused: <why>"``).
        A report is done unless a newer total replaced it meanwhile."""
        with self._transaction(job_map=False) as db:
            for report, answer in answers:
                key = (report.owner.kind, report.owner.reference, report.category)
                if answer.startswith("refused"):
                    db.execute(
                        "UPDATE usage_totals SET core_answer = ?, answered_at = ?"
                        " WHERE owner_type = ? AND owner = ? AND category = ?",
                        (answer[:1000], now, *key),
                    )
                else:
                    db.execute(
                        "UPDATE usage_totals SET reported_total = ?, reported_at = ?, core_answer = ?, answered_at = ?"
                        " WHERE owner_type = ? AND owner = ? AND category = ?",
                        (report.total, now, answer, now, *key),
                    )
                db.execute(
                    "DELETE FROM usage_outbox WHERE owner_type = ? AND owner = ? AND category = ? AND total = ?",
                    (*key, report.total),
                )

    def usage_failed(self, reports: Iterable[PendingUsage], error: str) -> None:
        with self._transaction(job_map=False) as db:
            db.executemany(
                "UPDATE usage_outbox SET attempts = attempts + 1, last_error = ?"
                " WHERE owner_type = ? AND owner = ? AND category = ?",
                [(error[:1000], r.owner.kind, r.owner.reference, r.category) for r in reports],
            )

    def usage_totals(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Per (owner, category): the total, what Core was last sent and answered, and what waits."""
        sql = (
            "SELECT t.*, o.total AS pending_total, o.attempts, o.last_error,"
            " (SELECT COUNT(*) FROM usage_jobs u WHERE u.owner_type = t.owner_type AND u.owner = t.owner"
            "  AND u.category = t.category) AS jobs"
            " FROM usage_totals t LEFT JOIN usage_outbox o USING (owner_type, owner, category)"
        )
        params: tuple[Any, ...] = ()
        if owner is not None:
            sql += " WHERE t.owner = ?"
            params = (owner,)
        return [dict(r) for r in self._query(sql + " ORDER BY t.owner_type, t.owner, t.category", params)]

    def usage_stats(self) -> UsageStats:
        pending = self._query("SELECT COUNT(*) AS n, MIN(queued_at) AS oldest FROM usage_outbox")[0]
        exhausted = self._query("SELECT COUNT(*) AS n FROM usage_totals WHERE core_answer = 'false'")[0]["n"]
        reported = {
            r["category"]: int(r["s"] or 0)
            for r in self._query("SELECT category, SUM(reported_total) AS s FROM usage_totals GROUP BY category")
        }
        open_jobs = self._query("SELECT COUNT(*) AS n FROM usage_jobs WHERE final = 0")[0]["n"]
        return UsageStats(pending["n"], pending["oldest"], exhausted, reported, open_jobs)

    def usage_active_jobs(self, owner: Owner, category: str) -> list[TrackedJob]:
        """The owner's jobs of this category that the job map holds as not finished."""
        rows = self._query(
            "SELECT j.* FROM jobs j JOIN usage_jobs u USING (ucloud_id) WHERE u.owner_type = ? AND u.owner = ?"
            " AND u.category = ? AND j.state NOT IN (?, ?, ?)",
            (owner.kind, owner.reference, category, *_FINAL),
        )
        return [_job(r) for r in rows]


@dataclass(frozen=True)
class UsageTotalChange:
    owner: Owner
    category: str
    change: TotalChange
    computed: int


@dataclass(frozen=True)
class PendingUsage:
    """A total waiting to be reported to Core."""

    owner: Owner
    category: str
    total: int
    queued_at: int
    attempts: int


@dataclass(frozen=True)
class UsageStats:
    pending: int
    oldest_queued_at: int | None
    exhausted: int  # (owner, category) pairs whose last answer from Core was false
    reported_by_category: dict[str, int]
    open_jobs: int


def _usage(row: sqlite3.Row) -> JobUsage:
    return JobUsage(
        ucloud_id=row["ucloud_id"],
        slurm_id=row["slurm_id"],
        expected_name=row["expected_name"],
        owner=Owner(row["owner_type"], row["owner"]),
        category=row["category"],
        product=row["product"],
        elapsed_seconds=row["elapsed_s"],
        resource_seconds=row["resource_seconds"],
        final=bool(row["final"]),
        held_since=row["held_since"],
    )


def _intent(row: sqlite3.Row) -> Intent:
    return Intent(row["ucloud_id"], row["unix_user"], row["first_at"], row["last_at"], row["attempts"])


# -- checking a file before it is opened for writing -------------------------------------------------


def inspect_file(path: Path) -> int:
    """The schema version of an existing store (0 for no file or an empty one), read without writing.

    Raises ``StoreUnusable`` naming the file and what is wrong: not SQLite, damaged, written by a newer
    version, or not this daemon's schema. Nothing here writes, so a file refused is left untouched
    (journal mode, migrations and every other write come only after it passed).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StoreUnusable(f"{path}: cannot be read: {exc.strerror}") from None
    if size == 0:
        return 0
    try:
        with path.open("rb") as handle:
            head = handle.read(100)
    except OSError as exc:
        raise StoreUnusable(f"{path}: cannot be read: {exc.strerror}") from None
    if not head.startswith(_SQLITE_HEADER):
        raise StoreUnusable(f"{path}: not an SQLite database (it starts with {head[:16]!r})")
    if size < 512 or len(head) < 100:
        raise StoreUnusable(f"{path}: truncated ({size} bytes; an SQLite database is at least 512)")
    # Without a -wal file there is nothing but the file to read: immutable=1 then keeps SQLite from
    # creating -wal and -shm files beside a file it is about to refuse.
    immutable = "" if Path(f"{path}-wal").exists() else "&immutable=1"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{immutable}", uri=True)
    except sqlite3.Error as exc:
        raise StoreUnusable(f"{path}: cannot be opened: {exc}") from None
    try:
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreUnusable(f"{path}: damaged (SQLite's check says: {'; '.join(problems)})")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        found = _layout(db)
    except sqlite3.DatabaseError as exc:
        raise StoreUnusable(f"{path}: damaged or not a database ({exc})") from None
    finally:
        db.close()
    if version > SCHEMA_VERSION:
        raise StoreUnusable(
            f"{path}: written by a newer ucloud-slurm-provider (schema {version}, this version knows up to "
            f"{SCHEMA_VERSION}); run the newer version, or restore a backup"
        )
    if version == 0 and found:
        raise StoreUnusable(f"{path}: not a ucloud-slurm-provider store (it has tables {', '.join(sorted(found))})")
    problem = describe_difference(found, expected_layout(version))
    if problem:
        raise StoreUnusable(f"{path}: says schema {version} but does not have it ({problem})")
    return version


def _layout(db: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Table -> column names, SQLite's own tables left out."""
    tables = [
        r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    return {t: tuple(r[1] for r in db.execute(f"PRAGMA table_info('{t}')")) for t in tables}


def expected_layout(version: int) -> dict[str, tuple[str, ...]]:
    """The tables and columns a store of ``version`` has: its migrations, applied to an empty database."""
    db = sqlite3.connect(":memory:")
    try:
        for migration in MIGRATIONS[:version]:
            for statement in migration:
                db.execute(statement)
        return _layout(db)
    finally:
        db.close()


def describe_difference(found: dict[str, tuple[str, ...]], expected: dict[str, tuple[str, ...]]) -> str:
    """A short account of how ``found`` differs from ``expected`` ("" if it does not)."""
    problems = [f"table {t} missing" for t in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected table {t}" for t in sorted(found.keys() - expected.keys())]
    for table in sorted(expected.keys() & found.keys()):
        if found[table] != expected[table]:
            missing = [c for c in expected[table] if c not in found[table]]
            extra = [c for c in found[table] if c not in expected[table]]
            detail = ", ".join([*(f"no column {c}" for c in missing), *(f"unexpected column {c}" for c in extra)])
            problems.append(f"table {table}: {detail or 'columns in another order'}")
    return "; ".join(problems)


def _body(update: JobUpdate) -> str:
    return json.dumps(update.to_wire(), separators=(",", ":"))


_JOB_COLUMNS = (
    "ucloud_id, slurm_id, cluster, expected_name, submitted_at, state, status, slurm_state, miss_count,"
    " first_missed_at, unix_user"
)  # TrackedJob's fields, in its order
_JOB_STATES = {state.value: state for state in JobState}


def _job_from_tuple(row: tuple[Any, ...]) -> TrackedJob:
    """A row as read by a pass, sharing what rows repeat: the Slurm job's name is its UCloud id (one
    string, not two), and the Slurm states and statuses of 100,000 jobs are a handful of texts."""
    ucloud_id, name, status, slurm_state = row[0], row[3], row[6], row[7]
    return TrackedJob(
        ucloud_id, row[1], row[2], ucloud_id if name == ucloud_id else name, row[4], _JOB_STATES[row[5]],
        None if status is None else sys.intern(status), None if slurm_state is None else sys.intern(slurm_state),
        row[8], row[9], row[10],
    )


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
