"""Parsers for the text that ``squeue -O`` and ``sacct -P`` print, tested against recorded output.

Both commands are asked for a fixed list of fields separated by the ASCII unit separator (0x1f), which
no job name or comment contains in practice; ``|`` is not safe (Slurm escapes nothing, and a job may be
named ``a|b c``). squeue's job name comes last, so even a stray separator cannot shift other columns. Bytes that are not
UTF-8 (job names can hold anything) are decoded with replacement by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from provider.slurm.types import ExitStatus, SlurmJob, parse_state

UNIT_SEPARATOR = "\x1f"

SQUEUE_FIELDS: tuple[str, ...] = (
    "JobID",
    "ArrayJobID",
    "ArrayTaskID",
    "State",
    "Reason",
    "exit_code",
    "Name",
)

SACCT_FIELDS: tuple[str, ...] = (
    "JobIDRaw",
    "JobID",
    "JobName",
    "State",
    "ExitCode",
    "Reason",
    "Submit",
    "Start",
    "End",
    "Elapsed",
    "Timelimit",
    "Comment",
)

_ARRAY_DISPLAY_ID = re.compile(r"^(\d+)_(\d+)$")
_NOT_APPLICABLE = {"", "N/A", "(null)"}


class ParseError(ValueError):
    """The output does not have the shape that was asked for; the query counts as failed."""


def _rows(text: str, fields: Sequence[str], sep: str) -> list[dict[str, str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        values = line.split(sep, len(fields) - 1)
        if len(values) != len(fields):
            raise ParseError(f"line {number} has {len(values)} fields, expected {len(fields)}: {line[:200]!r}")
        rows.append(dict(zip(fields, values, strict=True)))
    return rows


def _clean(value: str) -> str | None:
    value = value.strip()
    return None if value in _NOT_APPLICABLE else value


def parse_squeue(text: str, fields: Sequence[str] = SQUEUE_FIELDS, sep: str = UNIT_SEPARATOR) -> list[SlurmJob]:
    """Parse ``squeue -h -t all -O <fields with sep>``; a pending array prints one row (task ``0-2``)."""
    jobs = []
    for row in _rows(text, fields, sep):
        job_id = row["JobID"].strip()
        if not job_id.isdigit():
            raise ParseError(f"squeue printed a job id that is not a number: {job_id!r}")
        exit_text = row.get("exit_code", "")
        jobs.append(
            SlurmJob(
                job_id=job_id,
                state=parse_state(row["State"]),
                name=row.get("Name", ""),
                array_job_id=_clean(row.get("ArrayJobID", "")),
                array_task_id=_clean(row.get("ArrayTaskID", "")),
                reason=(row.get("Reason") or "").strip(),
                exit_status=ExitStatus.from_squeue(exit_text) if _clean(exit_text) else None,
                comment=row.get("Comment", ""),
            )
        )
    return jobs


def parse_sacct(text: str, fields: Sequence[str] = SACCT_FIELDS, sep: str = UNIT_SEPARATOR) -> list[SlurmJob]:
    """Parse ``sacct -n -P -X --delimiter=<sep> -o <fields>``; one allocation row per job."""
    jobs = []
    for row in _rows(text, fields, sep):
        raw_id = row["JobIDRaw"].strip()
        if not raw_id.isdigit():
            # Steps (``12.batch``) only appear without -X; skip them rather than fail the pass.
            continue
        display = row.get("JobID", "").strip()
        array = _ARRAY_DISPLAY_ID.match(display)
        jobs.append(
            SlurmJob(
                job_id=raw_id,
                state=parse_state(row["State"]),
                name=row.get("JobName", ""),
                array_job_id=array.group(1) if array else None,
                array_task_id=array.group(2) if array else None,
                reason=(row.get("Reason") or "").strip(),
                exit_status=ExitStatus.from_sacct(row.get("ExitCode", "")),
                comment=row.get("Comment", ""),
            )
        )
    return jobs
