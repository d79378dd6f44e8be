"""The Slurm -> UCloud state table: every Slurm state has an explicit answer."""

from __future__ import annotations

import pytest

from provider.slurm.types import BASE_STATES, STATE_FLAGS, ExitStatus, SlurmJob, parse_state
from provider.states import DEFAULT_TABLE, KEEP, StateTable
from provider.ucloud.models import JobState


def mapped(text: str, **kw: object) -> JobState | None:
    return StateTable().map(SlurmJob("7", parse_state(text), **kw)).state  # type: ignore[arg-type]


def test_every_slurm_base_state_and_flag_is_in_the_table() -> None:
    assert set(DEFAULT_TABLE) >= BASE_STATES | STATE_FLAGS


@pytest.mark.parametrize(
    ("slurm", "ucloud"),
    [
        ("PENDING", JobState.IN_QUEUE),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETED", JobState.SUCCESS),
        ("FAILED", JobState.FAILURE),
        ("OUT_OF_MEMORY", JobState.FAILURE),
        ("TIMEOUT", JobState.EXPIRED),
        ("CANCELLED", JobState.SUCCESS),
        ("CANCELLED by 0", JobState.SUCCESS),
        ("CANCELLED by 1001", JobState.SUCCESS),
        ("SUSPENDED", JobState.SUSPENDED),
        ("NODE_FAIL", JobState.FAILURE),
        ("PREEMPTED", JobState.FAILURE),
        ("BOOT_FAIL", JobState.FAILURE),
        ("DEADLINE", JobState.FAILURE),
        ("REQUEUED", JobState.IN_QUEUE),
        ("CONFIGURING", JobState.IN_QUEUE),
        ("STOPPED", JobState.RUNNING),
    ],
)
def test_default_table(slurm: str, ucloud: JobState) -> None:
    assert mapped(slurm) is ucloud


@pytest.mark.parametrize("text", ["COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"])
def test_transient_flags_never_finalise(text: str) -> None:
    assert mapped(text) is None


def test_completing_flag_outranks_a_final_base_state_in_json() -> None:
    assert mapped(["FAILED", "COMPLETING"]) is None  # type: ignore[arg-type]
    assert mapped(["RUNNING"]) is JobState.RUNNING  # type: ignore[arg-type]


def test_unknown_state_is_kept_and_flagged_unmapped() -> None:
    result = StateTable().map(SlurmJob("7", parse_state("EXPLODED")))
    assert result.state is None and not result.mapped and "EXPLODED" in result.status


def test_admin_override_changes_one_entry_only() -> None:
    table = StateTable({"FAILED": "SUCCESS", "PREEMPTED": "KEEP"})
    assert table.map(SlurmJob("7", parse_state("FAILED"))).state is JobState.SUCCESS
    assert table.map(SlurmJob("7", parse_state("PREEMPTED"))).state is None
    assert table.map(SlurmJob("7", parse_state("TIMEOUT"))).state is JobState.EXPIRED
    assert DEFAULT_TABLE["PREEMPTED"] is not KEEP


def test_cancelled_by_keeps_the_uid_and_the_first_word() -> None:
    state = parse_state("CANCELLED by 1001")
    assert (state.base, state.cancelled_by) == ("CANCELLED", 1001)
    assert "uid 1001" in StateTable().map(SlurmJob("7", state)).status


def test_failure_message_names_the_exit_code_or_signal() -> None:
    table = StateTable()
    assert "exit code 2" in table.map(SlurmJob("7", parse_state("FAILED"), exit_status=ExitStatus(2, 0))).status
    assert "signal 9" in table.map(SlurmJob("7", parse_state("FAILED"), exit_status=ExitStatus(0, 9))).status


def test_pending_reason_reaches_the_status_line() -> None:
    job = SlurmJob("7", parse_state("PENDING"), reason="Resources")
    assert StateTable().map(job).status == "Your job is currently in the queue (Resources)"


@pytest.mark.parametrize(
    ("text", "code", "signal"), [("256", 1, 0), ("512", 2, 0), ("9", 0, 9), ("15", 0, 15), ("0", 0, 0)]
)
def test_squeue_exit_code_is_a_wait_status(text: str, code: int, signal: int) -> None:
    assert ExitStatus.from_wait_status(text) == ExitStatus(code, signal)


def test_sacct_exit_code_is_code_colon_signal() -> None:
    assert ExitStatus.from_sacct("1:0") == ExitStatus(1, 0)
    assert ExitStatus.from_sacct("0:9") == ExitStatus(0, 9)
    assert ExitStatus.from_sacct("") is None


def test_squeue_exit_code_changed_shape_in_slurm_24() -> None:
    assert ExitStatus.from_squeue("256") == ExitStatus(1, 0)  # 22.05: the raw wait status
    assert ExitStatus.from_squeue("1:0") == ExitStatus(1, 0)  # 24.11 and later: code:signal
    assert ExitStatus.from_squeue("0:9") == ExitStatus(0, 9)
