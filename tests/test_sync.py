"""Pass scheduling: however often Slurm fails, re-checks cannot multiply into a query storm."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from provider.reconcile import DebounceRules, Decision
from provider.slurm.backend import QueryBook
from provider.slurm.commands import CommandBackend
from provider.slurm.types import QueryResult, SlurmJob, parse_state
from provider.states import StateTable
from provider.store import Store
from provider.sync import Belief, PassReport, PassTimings, Synchronizer
from provider.ucloud.models import JobState


async def test_failing_passes_share_one_recheck_timer(tmp_path: Path) -> None:
    # A Slurm whose commands cannot even be started: every pass fails and asks for a re-check.
    backend = CommandBackend(bin_dir=str(tmp_path / "no-slurm-here"), timeout=5)
    store = Store(tmp_path / "s.sqlite3")
    now = int(time.time() * 1000)
    store.track(ucloud_id="1", slurm_id="41", cluster="", expected_name="1", submitted_at=now, now=now)
    sync = Synchronizer(store, backend, StateTable(), DebounceRules(), PassTimings(confirm_interval_s=0.5))
    worker = asyncio.ensure_future(sync.run())
    try:
        for _ in range(10):  # ten monitor ticks in a row, each pass failing
            await sync.request_active()
        started = sync.passes
        await asyncio.sleep(2.2)
        # One re-check chain: about one pass per 0.5 s, not ten.
        assert sync.passes - started <= 5, sync.passes - started
        assert sync.passes - started >= 3  # and the re-checks do happen
        assert backend.calls["squeue"] == sync.passes and sync.last_report is not None
        assert sync.last_report.live_ok is False
    finally:
        worker.cancel()
        store.close()


async def test_an_earlier_request_moves_the_shared_timer_forward(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    sync = Synchronizer(store, CommandBackend(bin_dir=str(tmp_path)), StateTable(), DebounceRules())
    worker = asyncio.ensure_future(sync.run())
    try:
        sync.request_later({"a": Belief()}, 30)
        sync.request_later({"b": Belief()}, 0.1)  # e.g. a terminate wants a pass soon
        await asyncio.sleep(0.5)
        assert sync.passes == 1  # both were handled in that one early pass
        assert sync.waiting_later == frozenset() and sync.idle
    finally:
        worker.cancel()
        store.close()


class ListedSlurm(QueryBook):
    """squeue lists the given jobs; sacct knows nothing."""

    name = "listed"

    def __init__(self, jobs: list[SlurmJob]) -> None:
        super().__init__()
        self.jobs = jobs

    async def live_jobs(self) -> QueryResult:
        self.calls["squeue"] += 1
        return QueryResult.of(self.jobs)

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        self.calls["sacct"] += 1
        return QueryResult.of([])


async def test_a_pass_where_nothing_changed_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    now = int(time.time() * 1000)
    for n in range(3):
        store.track(ucloud_id=str(n), slurm_id=str(40 + n), cluster="", expected_name=str(n), submitted_at=now, now=now)
    backend = ListedSlurm([SlurmJob(str(40 + n), parse_state("PENDING"), name=str(n)) for n in range(3)])
    sync = Synchronizer(store, backend, StateTable(), DebounceRules())
    first = await sync.run_pass({}, include_active=True)
    written = store.rows_written
    assert first.queued == 0 and written > 0  # the Slurm state was new to the map: stored
    again = await sync.run_pass({}, include_active=True)
    assert again.queued == 0 and store.rows_written == written  # the same answer: not one row rewritten
    backend.jobs[1] = SlurmJob("41", parse_state("RUNNING"), name="1")
    moved = await sync.run_pass({}, include_active=True)
    assert moved.queued == 1 and store.rows_written == written + 2  # the job's row and its update
    assert backend.calls == {"squeue": 3}
    store.close()


async def test_a_quiet_pass_repeats_what_the_last_settled_and_decides_whatever_moved(tmp_path: Path) -> None:
    """A monitor pass gives a job its previous decision only when its row, its squeue line, Core's
    belief and the state table are all what the previous pass saw; anything else is decided anew."""
    path = tmp_path / "s.sqlite3"
    store = Store(path)
    now = int(time.time() * 1000)
    for n in range(4):
        store.track(ucloud_id=str(n), slurm_id=str(40 + n), cluster="", expected_name=str(n), submitted_at=now, now=now)
    backend = ListedSlurm([SlurmJob(str(40 + n), parse_state("PENDING"), name=str(n)) for n in range(4)])
    sync = Synchronizer(store, backend, StateTable(), DebounceRules())

    def by_job(report: PassReport) -> dict[str, Decision]:
        return {d.ucloud_id: d for d in report.decisions}

    await sync.run_pass({}, include_active=True)  # the Slurm state is new to the map: rows change
    settled = by_job(await sync.run_pass({}, include_active=True))
    quiet = by_job(await sync.run_pass({}, include_active=True))
    assert all(quiet[n] is settled[n] for n in "0123")

    backend.jobs[1] = SlurmJob("41", parse_state("RUNNING"), name="1")  # squeue's line changed
    moved = by_job(await sync.run_pass({"3": Belief(JobState.RUNNING, created_at=now)}, include_active=True))
    assert moved["0"] is quiet["0"] and moved["2"] is quiet["2"]
    assert moved["1"].update is not None and moved["1"].update.state is JobState.RUNNING
    assert moved["3"].update is not None and moved["3"].update.state is JobState.IN_QUEUE  # Core's belief was heard

    other = Store(path)  # the row changed (an admin's command on the file): Core was told RUNNING
    (row,) = [job for job in other.active() if job.ucloud_id == "2"]
    other.apply([Decision("2", "admin", tracked=row._replace(state=JobState.RUNNING))], now)
    other.close()
    reread = by_job(await sync.run_pass({}, include_active=True))
    assert reread["2"].update is not None and reread["2"].update.state is JobState.IN_QUEUE  # Slurm still says PENDING
    assert reread["0"] == quiet["0"]  # decided again (the other connection's commit had every row read anew), alike

    sync.table = StateTable({"PENDING": "RUNNING"})  # decisions made with another table are not reused
    retold = by_job(await sync.run_pass({}, include_active=True))
    assert retold["0"].update is not None and retold["0"].update.state is JobState.RUNNING
    store.close()


async def test_a_quiet_cluster_repeats_the_settled_through_squeue_s_own_answer(tmp_path: Path) -> None:
    """The real backend over a stand-in ``squeue`` that prints a file: while the file stays the same,
    the answer is the very same index and the settled decisions repeat; a row another connection
    changed is decided anew all the same, and so is a job whose line changed."""
    answer = tmp_path / "squeue.out"
    squeue = tmp_path / "squeue"
    squeue.write_text(f"#!/bin/sh\nexec cat {answer}\n")
    squeue.chmod(0o755)

    def lines(states: dict[str, str]) -> str:  # squeue's fields: JobID ArrayJobID ArrayTaskID State Reason exit_code Name
        return "".join(f"{40 + int(n)}\x1f{40 + int(n)}\x1fN/A\x1f{state}\x1fNone\x1f0:0\x1f{n}\n" for n, state in states.items())

    path = tmp_path / "s.sqlite3"
    store = Store(path)
    now = int(time.time() * 1000)
    for n in "012":
        store.track(ucloud_id=n, slurm_id=str(40 + int(n)), cluster="", expected_name=n, submitted_at=now, now=now)
    answer.write_text(lines({"0": "PENDING", "1": "PENDING", "2": "PENDING"}))
    backend = CommandBackend(bin_dir=str(tmp_path), timeout=5)
    sync = Synchronizer(store, backend, StateTable(), DebounceRules())

    def by_job(report: PassReport) -> dict[str, Decision]:
        return {d.ucloud_id: d for d in report.decisions}

    await sync.run_pass({}, include_active=True)
    settled = by_job(await sync.run_pass({}, include_active=True))
    quiet = by_job(await sync.run_pass({}, include_active=True))
    assert all(quiet[n] is settled[n] for n in "012") and backend.calls["squeue"] == 3

    other = Store(path)  # an admin's command on the file: Core was told RUNNING about job 2
    (row,) = [job for job in other.active() if job.ucloud_id == "2"]
    other.apply([Decision("2", "admin", tracked=row._replace(state=JobState.RUNNING))], now)
    other.close()
    reread = by_job(await sync.run_pass({}, include_active=True))  # squeue's answer: the same as before
    assert reread["2"].update is not None and reread["2"].update.state is JobState.IN_QUEUE

    answer.write_text(lines({"0": "PENDING", "1": "RUNNING", "2": "PENDING"}))
    moved = by_job(await sync.run_pass({}, include_active=True))
    assert moved["1"].update is not None and moved["1"].update.state is JobState.RUNNING
    assert moved["0"].update is None and moved["2"].update is None
    store.close()


class AnsweringSlurm(ListedSlurm):
    """squeue lists some jobs, sacct others."""

    def __init__(self, live: list[SlurmJob], history: list[SlurmJob]) -> None:
        super().__init__(live)
        self.history = history

    async def finished_jobs(self, slurm_ids: Sequence[str]) -> QueryResult:
        self.calls["sacct"] += 1
        return QueryResult.of([job for job in self.history if job.job_id in slurm_ids])


async def test_a_pass_failing_between_its_two_batches_loses_no_update_and_sends_none_twice(tmp_path: Path) -> None:
    """A pass stores what squeue answered (while sacct runs), then what sacct answered. If the second
    write fails (a full disk, the daemon killed), the first batch's rows and updates are in; the next
    pass decides the rest, and every update is queued exactly once."""
    store = Store(tmp_path / "s.sqlite3")
    now = int(time.time() * 1000)
    store.track(ucloud_id="a", slurm_id="41", cluster="", expected_name="a", submitted_at=now, now=now)
    store.track(ucloud_id="b", slurm_id="42", cluster="", expected_name="b", submitted_at=now, now=now, state=JobState.RUNNING)
    backend = AnsweringSlurm([SlurmJob("41", parse_state("RUNNING"), name="a")], [SlurmJob("42", parse_state("COMPLETED"), name="b")])
    sync = Synchronizer(store, backend, StateTable(), DebounceRules())
    apply, writes = store.apply, []

    def second_write_fails(decisions: list[Decision], at: int) -> int:
        writes.append([d.ucloud_id for d in decisions])
        if len(writes) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return apply(decisions, at)

    store.apply = second_write_fails  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        await sync.run_pass({}, include_active=True)
    assert writes == [["a"], ["b"]]
    assert [(i.ucloud_id, i.update["state"]) for i in store.outbox_peek(10)] == [("a", "RUNNING")]

    store.apply = apply  # type: ignore[method-assign]
    await sync.run_pass({}, include_active=True)
    queued = [(i.ucloud_id, i.update["state"]) for i in store.outbox_peek(10)]
    assert queued == [("a", "RUNNING"), ("b", "SUCCESS")]
    assert [(j.ucloud_id, j.state) for j in store.active()] == [("a", JobState.RUNNING)]  # b is final
    store.close()
