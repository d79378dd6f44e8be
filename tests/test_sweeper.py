"""The sweeper's rules: which Slurm jobs it may cancel, and when an intent is settled. No I/O."""

from __future__ import annotations

import pytest

from provider.reconcile import TrackedJob
from provider.slurm.parse import UNIT_SEPARATOR as US
from provider.store import Intent
from provider.sweeper import Absence, IntentDecision, NamedJob, SweepRules, decide_intent, parse_named_jobs, squeue_args
from provider.ucloud.models import JobState

NOW = 1_800_000_000_000
RULES = SweepRules(checks=3, window_ms=60_000)
SERVICE = "ucloud-provider"


def intent(ucloud_id: str = "5001", user: str | None = None) -> Intent:
    return Intent(ucloud_id, user, NOW - 10_000, NOW - 10_000, 1)


def job(slurm_id: str, name: str = "5001", *, user: str = SERVICE, comment: str = "UCloud job", state: str = "PENDING") -> NamedJob:
    return NamedJob(slurm_id, user, comment, state, name)


def tracked(slurm_id: str) -> TrackedJob:
    return TrackedJob("5001", slurm_id, "", "5001", NOW, JobState.IN_QUEUE)


def decide(listed: list[NamedJob], the_intent: Intent | None = None, **kw: object) -> IntentDecision:
    args: dict[str, object] = {"tracked": None, "in_flight": False, "absence": None, "service_user": SERVICE,
                               "rules": RULES, "now": NOW, **kw}
    return decide_intent(the_intent or intent(), listed, **args)  # type: ignore[arg-type]


def test_an_untracked_job_of_a_refused_create_is_cancelled() -> None:
    assert decide([job("17")]).cancel == ("17",)


def test_the_tracked_job_is_kept_and_only_a_duplicate_is_cancelled() -> None:
    """After a refused first try, a retry succeeded: its job is tracked, the first try's job is not."""
    d = decide([job("17"), job("18", state="RUNNING")], tracked=tracked("18"))
    assert d.cancel == ("17",)


def test_nothing_is_touched_while_the_create_still_runs() -> None:
    d = decide([job("17")], in_flight=True)
    assert d.cancel == () and not d.settled and d.absence is None


@pytest.mark.parametrize(
    "other",
    [
        job("17", comment="my own job"),  # named like a UCloud id, but not submitted by the daemon
        job("17", user="mallory"),  # another user's job with our name and comment
        job("17", name="5002"),  # another intent's name
        job("17", state="CANCELLED"),  # already finished: nothing to cancel
        job("17", state="COMPLETED"),
    ],
)
def test_jobs_that_are_not_ours_or_already_over_are_never_cancelled(other: NamedJob) -> None:
    assert decide([other]).cancel == ()


def test_in_owner_mode_the_job_must_run_as_the_owner() -> None:
    assert decide([job("17", user="donna")], intent(user="donna")).cancel == ("17",)
    assert decide([job("17", user=SERVICE)], intent(user="donna")).cancel == ()


def test_settled_only_after_enough_empty_looks_over_the_window() -> None:
    """A frozen slurmctld may take the job a moment after it thawed: one empty answer proves nothing."""
    first = decide([])
    assert not first.settled and first.absence == Absence(1, NOW)
    third_too_soon = decide([], absence=Absence(2, NOW - 30_000))
    assert not third_too_soon.settled and third_too_soon.absence == Absence(3, NOW - 30_000)
    late_but_few = decide([], absence=Absence(1, NOW - 600_000))
    assert not late_but_few.settled
    enough = decide([], absence=Absence(2, NOW - 60_000))
    assert enough.settled


def test_a_job_found_restarts_the_confirmation() -> None:
    d = decide([job("17")], absence=Absence(2, NOW - 60_000))
    assert d.cancel == ("17",) and d.absence is None and not d.settled


def test_a_tracked_job_alone_counts_as_nothing_to_cancel() -> None:
    d = decide([job("18", state="RUNNING")], tracked=tracked("18"), absence=Absence(2, NOW - 60_000))
    assert d.cancel == () and d.settled


def test_squeue_asks_for_the_names_only_with_the_identity_fields() -> None:
    args = squeue_args(["5001", "5002"])
    assert "--name=5001,5002" in args and "--states=all" in args and "--all" in args
    assert args[-1].split(",")[-1] == "Name:0"  # the name last: it may hold the separator


def test_squeue_lines_parse_with_a_separator_inside_the_name() -> None:
    text = f"17{US}root{US}UCloud job{US}PENDING{US}5001\n18{US}bob{US}{US}RUNNING{US}odd{US}name\n"
    assert parse_named_jobs(text) == [
        NamedJob("17", "root", "UCloud job", "PENDING", "5001"),
        NamedJob("18", "bob", "", "RUNNING", f"odd{US}name"),
    ]
    with pytest.raises(ValueError):
        parse_named_jobs("garbage without fields\n")
