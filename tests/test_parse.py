"""The parsers against output recorded from real Slurm clusters (tests/data/slurm-captures/<version>/).

Every version directory holds the same job situations (jobs.tsv), captured with the daemon's exact field
lists by deploy/local-slurm/capture-outputs.sh; each must parse to the same verdicts.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from provider.slurm.commands import sacct_argv, squeue_argv
from provider.slurm.parse import SACCT_FIELDS, SQUEUE_FIELDS, ParseError, index_squeue, parse_sacct, parse_squeue
from provider.slurm.process import CommandResult
from provider.slurm.types import QueryResult
from provider.states import StateTable
from provider.ucloud.models import JobState

CAPTURES = Path(__file__).parent / "data" / "slurm-captures"
VERSIONS = sorted(p.name for p in CAPTURES.iterdir() if p.is_dir())

# situation (jobs.tsv) -> (UCloud state, words the status must contain); None = keep the current state
EXPECTED: dict[str, tuple[JobState | None, str]] = {
    "timeout": (JobState.EXPIRED, "time limit"),
    "pending_held": (JobState.IN_QUEUE, "JobHeldUser"),
    "running": (JobState.RUNNING, "running"),
    "completed": (JobState.SUCCESS, "successfully completed"),
    "failed_exit1": (JobState.FAILURE, "exit code 1"),
    "failed_signal": (JobState.FAILURE, "signal 9"),
    "cancelled_running": (JobState.SUCCESS, "cancelled"),
    "cancelled_pending": (JobState.SUCCESS, "cancelled"),
    "array_held": (JobState.IN_QUEUE, ""),
    "name_with_pipe": (JobState.SUCCESS, ""),
    "out_of_memory": (JobState.FAILURE, ""),
}


def situations(version: str) -> dict[str, str]:
    with (CAPTURES / version / "jobs.tsv").open() as f:
        return {row["situation"]: row["job_id"] for row in csv.DictReader(f, delimiter="\t")}


def read(version: str, name: str) -> str:
    return (CAPTURES / version / f"{name}.txt").read_bytes().decode("utf-8", errors="replace")


def test_there_are_captures() -> None:
    assert VERSIONS, "no captured Slurm output under tests/data/slurm-captures"


def test_captures_used_the_daemons_field_lists() -> None:
    """The recorded command lines ask for exactly the fields the daemon asks for."""
    for version in VERSIONS:
        manifest = (CAPTURES / version / "manifest.tsv").read_text()
        assert ",".join(SACCT_FIELDS).replace(",", "\\,") in manifest
        assert ",".join(f"{f}:0\\037" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:0" in manifest
    assert f"--format={','.join(SACCT_FIELDS)}" in sacct_argv(["1"])
    assert "--states=all" in squeue_argv() and "--all" in squeue_argv()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", ["squeue-us", "sacct"])
def test_every_situation_maps_to_its_ucloud_state(version: str, command: str) -> None:
    parse = parse_squeue if command == "squeue-us" else parse_sacct
    jobs = QueryResult.of(parse(read(version, command)))
    table = StateTable()
    for situation, slurm_id in situations(version).items():
        if situation not in EXPECTED:
            continue
        assert slurm_id in jobs.jobs, f"{command} of Slurm {version} lacks {situation} (job {slurm_id})"
        mapped = table.map(jobs.jobs[slurm_id])
        state, words = EXPECTED[situation]
        if situation == "pending_held" and command == "sacct":
            words = ""  # accounting keeps no pending reason since 24.11; live jobs are read from squeue anyway
        assert mapped.state is state, (situation, jobs.jobs[slurm_id].state)
        assert words.lower() in mapped.status.lower(), (situation, mapped.status)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", ["squeue-us", "sacct"])
def test_a_name_with_a_pipe_and_a_space_survives(version: str, command: str) -> None:
    parse = parse_squeue if command == "squeue-us" else parse_sacct
    jobs = QueryResult.of(parse(read(version, command)))
    assert jobs.jobs[situations(version)["name_with_pipe"]].name == "a|b c"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", ["squeue-us", "sacct"])
def test_array_tasks_answer_to_raw_and_display_ids(version: str, command: str) -> None:
    parse = parse_squeue if command == "squeue-us" else parse_sacct
    jobs = QueryResult.of(parse(read(version, command)))
    array_id = situations(version)["array_finished"]
    tasks = [jobs.jobs[f"{array_id}_{task}"] for task in range(3)]
    assert len({t.job_id for t in tasks}) == 3  # three distinct raw ids
    assert all(jobs.jobs[t.job_id] is t for t in tasks)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_squeue_index_answers_as_the_parsed_list(version: str) -> None:
    """The daemon's squeue answer (rows made jobs only when looked up) holds exactly the jobs, under
    exactly the ids, that parsing every row gives; an array task is one object under both its ids."""
    text = read(version, "squeue-us")
    index, parsed = index_squeue(text), QueryResult.of(parse_squeue(text)).jobs
    assert len(index) == len(parsed) and set(index) == set(parsed)
    assert all(index[key] == job for key, job in parsed.items())
    assert index.get("999999999") is None and "999999999" not in index
    array_id = situations(version)["array_finished"]
    task = index[f"{array_id}_0"]
    assert index[task.job_id] is task


def test_an_unchanged_squeue_line_is_the_same_job_in_the_next_answer() -> None:
    """What lets a quiet pass repeat its decisions: the next index, given what the last one made,
    answers an unchanged line with the very same job, and a changed line with a new one."""
    first = index_squeue("7\x1f7\x1fN/A\x1fPENDING\x1fPriority\x1f0\x1fa\n8\x1f8\x1fN/A\x1fPENDING\x1fPriority\x1f0\x1fb\n")
    seven, eight = first["7"], first["8"]
    second = index_squeue(
        "7\x1f7\x1fN/A\x1fPENDING\x1fPriority\x1f0\x1fa\n8\x1f8\x1fN/A\x1fRUNNING\x1fNone\x1f0\x1fb\n", previous=first
    )
    assert second["7"] is seven
    assert second["8"] is not eight and second["8"].state.label == "RUNNING"
    third = index_squeue("7\x1f7\x1fN/A\x1fPENDING\x1fPriority\x1f0\x1fa\n", previous=second)
    assert third["7"] is seven and list(third.made.values()) == [seven]  # only what a pass looked up is kept


def test_an_unchanged_squeue_answer_is_the_same_index_and_any_change_is_a_new_one() -> None:
    """A quiet cluster: squeue answers as it did, so the last index is the answer, its jobs the same
    objects. A changed line, a line more or fewer, or the same lines in another order make a new index."""
    text = "7\x1f7\x1fN/A\x1fPENDING\x1fPriority\x1f0\x1fa\n8\x1f8\x1fN/A\x1fPENDING\x1fPriority\x1f0\x1fb\n"
    first = index_squeue(text)
    seven = first["7"]
    again = index_squeue(str(text.encode().decode()), previous=first)  # equal text, another string
    assert again is first and again["7"] is seven
    lines = text.splitlines(keepends=True)
    for changed in (text.replace("PENDING", "RUNNING", 1), text + text[:-1].replace("7", "9"), lines[0], lines[1] + lines[0]):
        other = index_squeue(changed, previous=first)
        assert other is not first and dict(other) == dict(index_squeue(changed))
    assert index_squeue(lines[1] + lines[0], previous=first)["7"] is seven  # reordered: the same line, the same job


def test_a_bad_squeue_row_fails_the_index_at_once() -> None:
    good = "7\x1f7\x1fN/A\x1fPENDING\x1fNone\x1f0\x1fname\n"
    assert len(index_squeue(good)) == 1
    with pytest.raises(ParseError):
        index_squeue(good + "abc\x1fabc\x1fN/A\x1fRUNNING\x1fNone\x1f0\x1fname\n")
    with pytest.raises(ParseError):
        index_squeue(good + "8\x1f8\x1fRUNNING\n")


@pytest.mark.parametrize("version", VERSIONS)
def test_cancelled_by_uid_in_sacct(version: str) -> None:
    jobs = QueryResult.of(parse_sacct(read(version, "sacct")))
    state = jobs.jobs[situations(version)["cancelled_running"]].state
    assert state.base == "CANCELLED"


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_ids_give_empty_output(version: str) -> None:
    assert parse_sacct(read(version, "sacct-unknown")) == []


def test_the_pipe_separated_form_is_ambiguous_which_is_why_we_do_not_use_it() -> None:
    for version in VERSIONS:
        line = next(row for row in read(version, "squeue").splitlines() if row.endswith("a|b c"))
        assert line.count("|") == len(SQUEUE_FIELDS)  # one more than the separators: a name broke it


def test_output_of_another_shape_is_an_error_not_an_empty_answer() -> None:
    with pytest.raises(ParseError):
        parse_squeue("1\x1f2\x1fRUNNING\n")
    with pytest.raises(ParseError):
        parse_squeue("abc\x1fabc\x1fN/A\x1fRUNNING\x1fNone\x1f0\x1fname\n")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("squeue-ctld-down", False),
        ("squeue-ctld-frozen", False),
        ("squeue-unknown", False),
        ("sacct-dbd-down", False),
        ("sacct-dbd-frozen", False),
        ("sacct-ctld-down", True),
        ("squeue-dbd-down", True),
        ("sacct-unknown", True),
    ],
)
def test_failed_queries_are_recognised_from_exit_code_and_stderr(version: str, name: str, ok: bool) -> None:
    folder = CAPTURES / version
    result = CommandResult(
        argv=(name.split("-")[0],),
        returncode=int((folder / f"{name}.rc").read_text()),
        stdout=read(version, name),
        stderr=(folder / f"{name}.stderr").read_text(),
        seconds=0.0,
    )
    assert result.ok is ok, result.describe()
