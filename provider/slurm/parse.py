"""Parsers for the text that ``squeue -O`` and ``sacct -P`` print, tested against recorded output.

Both commands are asked for a fixed list of fields separated by the ASCII unit separator (0x1f), which
no job name or comment contains in practice; ``|`` is not safe (Slurm escapes nothing, and a job may be
named ``a|b c``). squeue's job name comes last, so even a stray separator cannot shift other columns. Bytes that are not
UTF-8 (job names can hold anything) are decoded with replacement by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from provider.accounting import Allocation, UsageRecord
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

# What usage accounting asks sacct: elapsed seconds and the allocated resources of each job.
SACCT_USAGE_FIELDS: tuple[str, ...] = (
    "JobIDRaw",
    "JobID",
    "State",
    "ElapsedRaw",
    "AllocTRES",
    "ReqTRES",
    "JobName",
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


_MEMORY_SUFFIX_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}


def _memory_mb(value: str) -> int:
    """A TRES memory amount (``2000M``, ``1.50G``, a bare number of MB) in whole MB."""
    value = value.strip().upper()
    factor = _MEMORY_SUFFIX_MB.get(value[-1:])
    number = value[:-1] if factor is not None else value
    try:
        return int(float(number) * (factor or 1))
    except ValueError:
        raise ParseError(f"a TRES memory amount is not a number: {value!r}") from None


def parse_tres(text: str) -> dict[str, str]:
    """``billing=2,cpu=2,gres/gpu=1,mem=2000M,node=1`` -> ``{"cpu": "2", "gres/gpu": "1", ...}``."""
    pairs: dict[str, str] = {}
    for item in text.strip().split(","):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ParseError(f"a TRES entry is not name=value: {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def allocation_from_tres(alloc_tres: str, req_tres: str = "") -> Allocation:
    """What Slurm allocated. Memory comes from AllocTRES, or from ReqTRES where Slurm does not
    allocate memory as a resource (``SelectTypeParameters=CR_Core``: AllocTRES then has no ``mem``).
    GPUs are ``gres/gpu`` (typed ``gres/gpu:a100`` entries are counted only through the untyped total).
    """
    alloc = parse_tres(alloc_tres)
    requested = parse_tres(req_tres) if req_tres.strip() else {}

    def count(name: str, source: dict[str, str]) -> int:
        value = source.get(name, "0")
        try:
            return int(value)
        except ValueError:
            raise ParseError(f"TRES {name}={value!r} is not a whole number") from None

    memory = alloc.get("mem") or requested.get("mem") or "0"
    return Allocation(
        cpus=count("cpu", alloc),
        memory_mb=_memory_mb(memory),
        gpus=count("gres/gpu", alloc),
        nodes=count("node", alloc),
    )


def parse_sacct_usage(
    text: str, fields: Sequence[str] = SACCT_USAGE_FIELDS, sep: str = UNIT_SEPARATOR
) -> list[UsageRecord]:
    """Parse ``sacct -n -P -X --delimiter=<sep> -o <SACCT_USAGE_FIELDS>``: one allocation row per job.

    A pending job has an empty AllocTRES and ElapsedRaw 0: it has used nothing yet.
    """
    records = []
    for row in _rows(text, fields, sep):
        raw_id = row["JobIDRaw"].strip()
        if not raw_id.isdigit():
            continue  # a step row (only without -X)
        elapsed_text = row["ElapsedRaw"].strip() or "0"
        if not elapsed_text.isdigit():
            raise ParseError(f"sacct printed an ElapsedRaw that is not a number: {elapsed_text!r}")
        display = row.get("JobID", "").strip()
        array = _ARRAY_DISPLAY_ID.match(display)
        keys = (raw_id, f"{array.group(1)}_{array.group(2)}") if array else (raw_id,)
        records.append(
            UsageRecord(
                job_id=raw_id,
                name=row.get("JobName", ""),
                state=parse_state(row["State"]),
                elapsed_seconds=int(elapsed_text),
                allocation=allocation_from_tres(row["AllocTRES"], row.get("ReqTRES", "")),
                keys=keys,
            )
        )
    return records
