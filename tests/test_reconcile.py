"""The reconciliation rules, one sentence of the issue at a time, without any I/O."""

from __future__ import annotations

from provider.reconcile import (
    DebounceRules,
    Observation,
    Seen,
    TrackedJob,
    decide_tracked,
    decide_untracked,
    observe,
    split_by_listing,
)
from provider.slurm.types import QueryResult, SlurmJob, parse_state
from provider.states import StateTable
from provider.ucloud.models import NO_LONGER_AVAILABLE, JobState

NOW = 1_800_000_000_000
RULES = DebounceRules(checks=3, window_ms=60_000, min_age_ms=300_000)
TABLE = StateTable()
JOB = TrackedJob("54112", "41", "c", "54112", submitted_at=NOW - 3_600_000, state=JobState.RUNNING)


def slurm(state: str, name: str = "54112", job_id: str = "41", **kw: object) -> SlurmJob:
    return SlurmJob(job_id, parse_state(state), name=name, **kw)  # type: ignore[arg-type]


def found(state: str, **kw: object) -> Observation:
    return Observation(Seen.FOUND, slurm(state, **kw), "squeue")


MISSING = Observation(Seen.MISSING, detail="gone")
UNKNOWN = Observation(Seen.UNKNOWN, detail="squeue timed out")


def test_unknown_job_older_than_the_grace_fails_with_the_seed_update() -> None:
    decision = decide_untracked("54112", created_at=1633329776235, believed=JobState.RUNNING, grace_ms=60_000, now=NOW)
    assert decision.update is not None
    assert decision.update.to_wire() == {
        "state": "FAILURE",
        "outputFolder": None,
        "status": "Your job is no longer available",
        "expectedState": None,
        "expectedDifferentState": None,
        "newTimeAllocation": None,
        "allowRestart": None,
        "newMounts": None,
        "timestamp": NOW,
    }


def test_unknown_job_within_the_grace_is_spared_and_rechecked() -> None:
    decision = decide_untracked("9", created_at=NOW - 5_000, believed=JobState.IN_QUEUE, grace_ms=60_000, now=NOW)
    assert decision.update is None and decision.recheck


def test_running_job_core_thinks_queued_becomes_running_guarded_by_expected_state() -> None:
    decision = decide_tracked(JOB._replace(state=JobState.IN_QUEUE), JobState.IN_QUEUE, found("RUNNING"), TABLE, RULES, NOW)
    assert decision.update is not None
    assert (decision.update.state, decision.update.expected_state) == (JobState.RUNNING, JobState.IN_QUEUE)
    assert decision.tracked is not None and decision.tracked.state is JobState.RUNNING


def test_final_states_carry_no_expected_state() -> None:
    decision = decide_tracked(JOB, JobState.RUNNING, found("COMPLETED"), TABLE, RULES, NOW)
    assert decision.update is not None
    assert (decision.update.state, decision.update.expected_state) == (JobState.SUCCESS, None)


def test_same_state_sends_nothing() -> None:
    assert decide_tracked(JOB, JobState.RUNNING, found("RUNNING"), TABLE, RULES, NOW).update is None


def test_a_failed_query_changes_nothing_not_even_the_miss_counter() -> None:
    job = JOB._replace(miss_count=2, first_missed_at=NOW - 100_000)
    decision = decide_tracked(job, JobState.RUNNING, UNKNOWN, TABLE, RULES, NOW)
    assert decision.update is None and decision.tracked == job
    assert decision.recheck  # asked again soon, not only when Core next calls verify


def test_missing_job_is_failed_only_after_enough_checks_over_the_window() -> None:
    job, now = JOB, NOW
    for check in (1, 2):
        decision = decide_tracked(job, None, MISSING, TABLE, RULES, now)
        assert decision.update is None and decision.recheck
        assert decision.tracked is not None and decision.tracked.miss_count == check
        job, now = decision.tracked, now + 30_000
    decision = decide_tracked(job, None, MISSING, TABLE, RULES, now)
    assert decision.update is not None
    assert (decision.update.state, decision.update.status) == (JobState.FAILURE, NO_LONGER_AVAILABLE)


def test_three_quick_misses_are_not_enough_without_the_window() -> None:
    job = JOB
    for _ in range(5):
        decision = decide_tracked(job, None, MISSING, TABLE, RULES, NOW + 1_000)
        job = decision.tracked  # type: ignore[assignment]
    assert decision.update is None


def test_a_young_job_is_never_declared_gone() -> None:
    young = JOB._replace(submitted_at=NOW - 10_000, miss_count=10, first_missed_at=NOW - 3_600_000)
    assert decide_tracked(young, None, MISSING, TABLE, RULES, NOW).update is None


def test_being_seen_again_resets_the_misses() -> None:
    job = JOB._replace(miss_count=2, first_missed_at=NOW - 50_000)
    decision = decide_tracked(job, None, found("RUNNING"), TABLE, RULES, NOW)
    assert decision.tracked is not None and (decision.tracked.miss_count, decision.tracked.first_missed_at) == (0, None)


def test_completing_keeps_the_current_state() -> None:
    decision = decide_tracked(JOB, JobState.RUNNING, found("COMPLETING"), TABLE, RULES, NOW)
    assert decision.update is None and decision.tracked is not None and decision.tracked.state is JobState.RUNNING


def test_a_final_job_core_still_thinks_active_gets_its_final_state_again() -> None:
    done = JOB._replace(state=JobState.SUCCESS, status="Your job has successfully completed")
    decision = decide_tracked(done, JobState.RUNNING, UNKNOWN, TABLE, RULES, NOW)
    assert decision.update is not None and decision.update.state is JobState.SUCCESS


# -- observe: combining squeue and sacct ------------------------------------------------------------


def test_live_answer_wins() -> None:
    obs = observe(JOB, QueryResult.of([slurm("RUNNING")]), None)
    assert obs.seen is Seen.FOUND and obs.source == "squeue"


def test_a_reused_id_with_another_name_is_not_our_job() -> None:
    live = QueryResult.of([slurm("RUNNING", name="someone-else")])
    assert split_by_listing([JOB], live) == ([], [JOB])  # sacct is asked about it
    obs = observe(JOB, live, QueryResult.of([slurm("RUNNING", name="someone-else")]))
    assert obs.seen is Seen.MISSING and "another job" in obs.detail


def test_absent_from_squeue_final_in_sacct_is_found() -> None:
    obs = observe(JOB, QueryResult.of([]), QueryResult.of([slurm("COMPLETED")]))
    assert obs.seen is Seen.FOUND and obs.source == "sacct"


def test_absent_from_both_is_missing() -> None:
    assert observe(JOB, QueryResult.of([]), QueryResult.of([])).seen is Seen.MISSING


def test_stale_running_record_in_sacct_without_slurmctld_is_missing() -> None:
    obs = observe(JOB, QueryResult.of([]), QueryResult.of([slurm("RUNNING")]))
    assert obs.seen is Seen.MISSING and "accounting still says RUNNING" in obs.detail


def test_sacct_failure_is_unknown() -> None:
    assert observe(JOB, QueryResult.of([]), QueryResult.failed("slurmdbd down")).seen is Seen.UNKNOWN


def test_squeue_failure_trusts_only_final_accounting_records() -> None:
    down = QueryResult.failed("slurmctld down")
    assert observe(JOB, down, QueryResult.of([slurm("RUNNING")])).seen is Seen.UNKNOWN
    assert observe(JOB, down, QueryResult.of([])).seen is Seen.UNKNOWN
    assert observe(JOB, down, QueryResult.of([slurm("FAILED")])).seen is Seen.FOUND


def test_an_unmapped_state_is_kept_and_named_for_the_admin() -> None:
    decision = decide_tracked(JOB, JobState.RUNNING, found("WEIRD_NEW_STATE"), TABLE, RULES, NOW)
    assert decision.update is None and decision.unmapped_state == "WEIRD_NEW_STATE"
    assert decision.tracked is not None and decision.tracked.state is JobState.RUNNING
