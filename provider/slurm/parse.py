"""Parsers for the text that ``squeue -O`` and ``sacct -P`` print, tested against recorded output.

Both commands are asked for a fixed list of fields separated by the ASCII unit separator (0x1f), which
no job name or comment contains in practice; ``|`` is not safe (Slurm escapes nothing, and a job may be
named ``a|b c``). squeue's job name comes last, so even a stray separator cannot shift other columns. Bytes that are not
UTF-8 (job names can hold anything) are decoded with replacement by the caller.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from provider.accounting import Allocation, UsageRecord
from provider.collector import without_collector
from provider.slurm.types import ExitStatus, SlurmJob, job_keys, parse_state

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
    """Rows as dicts by field name (for the small outputs: usage records)."""
    return [dict(zip(fields, values, strict=True)) for values in _value_rows(text, len(fields), sep)]


def _value_rows(text: str, width: int, sep: str) -> Iterator[list[str]]:
    """Each non-empty line split into exactly ``width`` values (the last field may hold the separator)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line and not line.isspace():
            yield _split_line(line, number, width, sep)


def _split_line(line: str, number: int, width: int, sep: str) -> list[str]:
    values = line.split(sep, width - 1)
    if len(values) != width:
        raise ParseError(f"line {number} has {len(values)} fields, expected {width}: {line[:200]!r}")
    return values


# A pass parses one row per job, and the same few states and exit codes over and over (PENDING,
# COMPLETED, 0:0): parsed once each, shared (SlurmState and ExitStatus are immutable).
_state = functools.lru_cache(maxsize=1024)(parse_state)
_exit_sacct = functools.lru_cache(maxsize=1024)(ExitStatus.from_sacct)
_exit_squeue = functools.lru_cache(maxsize=1024)(ExitStatus.from_squeue)


def _clean(value: str) -> str | None:
    value = value.strip()
    return None if value in _NOT_APPLICABLE else value


def _column(fields: Sequence[str], name: str) -> int | None:
    return fields.index(name) if name in fields else None


def parse_squeue(text: str, fields: Sequence[str] = SQUEUE_FIELDS, sep: str = UNIT_SEPARATOR) -> list[SlurmJob]:
    """Parse ``squeue -h -t all -O <fields with sep>``; a pending array prints one row (task ``0-2``)."""
    make, job_col, width = _squeue_job_maker(fields), fields.index("JobID"), len(fields)
    return [
        make(_squeue_row(line, number, width, sep, job_col))
        for number, line in enumerate(text.splitlines(), start=1)
        if line and not line.isspace()
    ]


@without_collector  # a row per job, no cycles (provider.collector)
def index_squeue(
    text: str,
    fields: Sequence[str] = SQUEUE_FIELDS,
    sep: str = UNIT_SEPARATOR,
    previous: SqueueIndex | None = None,
) -> SqueueIndex:
    """``parse_squeue`` keyed by every id a job answers to (``QueryResult.of``), each row made a job
    only when looked up. Every row's shape is checked here, so bad output still fails the query.

    ``previous`` is the index of squeue's last answer (with the same fields): an unchanged line is
    the very same job again (checked then, its ids are the job's), so a pass can tell at once that
    nothing changed for it; an answer whose every line is unchanged, in order, is that very index
    (a quiet cluster: the lines are compared at C speed, nothing is split)."""
    lines = text.splitlines()
    if previous is not None and lines == previous.lines:
        return previous
    job_col, width = fields.index("JobID"), len(fields)
    array_col, task_col = _column(fields, "ArrayJobID"), _column(fields, "ArrayTaskID")
    known = previous.made if previous is not None else {}
    rows: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        job = known.get(line)
        if job is not None:
            keys = job.keys
        elif not line or line.isspace():
            continue
        else:
            row = _squeue_row(line, number, width, sep, job_col)
            array = _clean(row[array_col]) if array_col is not None else None
            task = _clean(row[task_col]) if task_col is not None else None
            keys = job_keys(row[job_col].strip(), array, task)
        for key in keys:
            rows.setdefault(key, line)
    maker = _squeue_job_maker(fields)
    return SqueueIndex(lines, rows, lambda line: maker(line.split(sep, width - 1)), known)


class SqueueIndex(Mapping[str, SlurmJob]):
    """squeue's answer by id, a row becoming a ``SlurmJob`` when first looked up (the same object under
    each of its ids). A pass looks up its own jobs only, and on a real cluster most of squeue's rows are
    other people's jobs: parsing all of them cost a 10,000-row pass 20 ms."""

    __slots__ = ("_known", "_make", "_rows", "lines", "made")

    def __init__(
        self, lines: list[str], rows: dict[str, str], make: Callable[[str], SlurmJob], known: Mapping[str, SlurmJob]
    ) -> None:
        self.lines = lines  # squeue's output, line by line (the same strings as the rows'): the next index compares them
        self._rows = rows
        self._make = make
        self._known = known
        self.made: dict[str, SlurmJob] = {}  # by line: what the next index starts from

    def __getitem__(self, key: str) -> SlurmJob:
        job = self.get(key)
        if job is None:
            raise KeyError(key)
        return job

    def get(self, key: str, default: SlurmJob | None = None) -> SlurmJob | None:  # type: ignore[override]
        """Without a KeyError for a miss: a pass asks about every job it tracks, found or not."""
        line = self._rows.get(key)
        if line is None:
            return default
        job = self.made.get(line)
        if job is None:
            job = self._known.get(line) or self._make(line)
            self.made[line] = job
        return job

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _squeue_row(line: str, number: int, width: int, sep: str, job_col: int) -> list[str]:
    """One line of squeue's output split into its values, its job id checked."""
    row = _split_line(line, number, width, sep)
    if not row[job_col].strip().isdigit():
        raise ParseError(f"squeue printed a job id that is not a number: {row[job_col].strip()!r}")
    return row


def _squeue_job_maker(fields: Sequence[str]) -> Callable[[list[str]], SlurmJob]:
    job_col, state_col = fields.index("JobID"), fields.index("State")
    name_col, array_col, task_col = _column(fields, "Name"), _column(fields, "ArrayJobID"), _column(fields, "ArrayTaskID")
    reason_col, exit_col, comment_col = _column(fields, "Reason"), _column(fields, "exit_code"), _column(fields, "Comment")

    def make(row: list[str]) -> SlurmJob:
        exit_text = row[exit_col] if exit_col is not None else ""
        return SlurmJob(
            job_id=row[job_col].strip(),
            state=_state(row[state_col]),
            name=row[name_col] if name_col is not None else "",
            array_job_id=_clean(row[array_col]) if array_col is not None else None,
            array_task_id=_clean(row[task_col]) if task_col is not None else None,
            reason=row[reason_col].strip() if reason_col is not None else "",
            exit_status=_exit_squeue(exit_text) if _clean(exit_text) else None,
            comment=row[comment_col] if comment_col is not None else "",
        )

    return make


@without_collector  # a row per job, no cycles (provider.collector)
def parse_sacct(text: str, fields: Sequence[str] = SACCT_FIELDS, sep: str = UNIT_SEPARATOR) -> list[SlurmJob]:
    """Parse ``sacct -n -P -X --delimiter=<sep> -o <fields>``; one allocation row per job."""
    raw_col, state_col = fields.index("JobIDRaw"), fields.index("State")
    display_col, name_col = _column(fields, "JobID"), _column(fields, "JobName")
    reason_col, exit_col, comment_col = _column(fields, "Reason"), _column(fields, "ExitCode"), _column(fields, "Comment")
    jobs = []
    for row in _value_rows(text, len(fields), sep):
        raw_id = row[raw_col].strip()
        if not raw_id.isdigit():
            # Steps (``12.batch``) only appear without -X; skip them rather than fail the pass.
            continue
        display = row[display_col].strip() if display_col is not None else ""
        array = _ARRAY_DISPLAY_ID.match(display) if "_" in display else None
        jobs.append(
            SlurmJob(
                job_id=raw_id,
                state=_state(row[state_col]),
                name=row[name_col] if name_col is not None else "",
                array_job_id=array.group(1) if array else None,
                array_task_id=array.group(2) if array else None,
                reason=row[reason_col].strip() if reason_col is not None else "",
                exit_status=_exit_sacct(row[exit_col]) if exit_col is not None else None,
                comment=row[comment_col] if comment_col is not None else "",
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
