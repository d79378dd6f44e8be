"""The pure rules of usage accounting: Slurm's record of a job -> UCloud accounting units, and totals.

UCloud accounts per product *category*: each category has a unit (Core, GPU, GB, or a currency) and a
frequency (minute, hour, day). A usage number Core receives is "units times periods": for a
``PERIODIC_MINUTE`` category of unit ``Core``, 90 means 90 core-minutes (Core's usage reports scale it
by ``ToMinutes() / 60`` to show core-hours). IM2 computes a job's usage exactly that way
(``convertJobTimeToAccountingUnits`` in ``im2/pkg/integrations/k8s/monitoring.go``)::

    usage = resource amount x (elapsed / period) x price

with the resource amount CPUs, GPUs or GB of memory (or nodes for a currency), the price 1 for
resource units and the product's ``price`` in millionths of the currency per node and period for a
currency. Here the amount and the elapsed time come from Slurm's own accounting (sacct's AllocTRES
and ElapsedRaw) instead of the product's nominal size.

Everything is integer arithmetic: a job's usage is kept exactly as "resource-seconds" (memory in MB,
so a GB is 1000 of them, as IM2's ``--mem <GB*1000>``), and a total per (owner, category) is
``floor(sum of resource-seconds x price / (period x scale))``: the only rounding is one truncation of
the total, never one per job, so no job is free because it was short.

No function here reads a clock, a file or Slurm: ``now`` and every record are passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal

from provider.slurm.types import FINISHED_BASE_STATES, SlurmState


class Unit(str, enum.Enum):
    """What a category charges for, as IM2's ``payment.unit`` / ``payment.type = Money``."""

    CPU = "cpu"
    GPU = "gpu"
    MEMORY = "memory"
    MONEY = "money"

    @property
    def core_name(self) -> str:
        """The accounting unit's name Core shows (IM2's names: Core, GPU, GB)."""
        return {Unit.CPU: "Core", Unit.GPU: "GPU", Unit.MEMORY: "GB"}.get(self, "")

    @property
    def scale(self) -> int:
        """Resource-seconds per unit-second: memory is counted in MB, and a GB is 1000 MB (as IM2)."""
        return 1000 if self is Unit.MEMORY else 1


class Frequency(str, enum.Enum):
    """How often a category charges; Core's ``AccountingFrequency``."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def core_name(self) -> str:
        return {Frequency.MINUTE: "PERIODIC_MINUTE", Frequency.HOUR: "PERIODIC_HOUR", Frequency.DAY: "PERIODIC_DAY"}[self]

    @property
    def seconds(self) -> int:
        return {Frequency.MINUTE: 60, Frequency.HOUR: 3600, Frequency.DAY: 86400}[self]


MICRO = 1_000_000  # Core keeps floating-point units (currencies) as millionths


def price_in_micro(price: float) -> int:
    """A price as Core stores it: ``floor(price x 1,000,000)`` (IM2's ``loadComputeProducts``)."""
    return int((Decimal(str(price)) * MICRO).to_integral_value(rounding=ROUND_FLOOR))


@dataclass(frozen=True)
class Rate:
    """How one product's usage is turned into its category's units."""

    unit: Unit
    frequency: Frequency
    price: int = 1  # millionths of the currency per node and period for MONEY; 1 for resource units

    @property
    def per_unit(self) -> int:
        """Resource-seconds in one unit (before the price)."""
        return self.frequency.seconds * self.unit.scale


@dataclass(frozen=True)
class Allocation:
    """What Slurm allocated a job, from sacct's ``AllocTRES`` (memory falls back to ``ReqTRES``)."""

    cpus: int = 0
    memory_mb: int = 0
    gpus: int = 0
    nodes: int = 0

    def amount(self, unit: Unit) -> int:
        """The resource amount a unit charges for, in its smallest whole step (MB for memory)."""
        return {Unit.CPU: self.cpus, Unit.GPU: self.gpus, Unit.MEMORY: self.memory_mb, Unit.MONEY: self.nodes}[unit]


@dataclass(frozen=True)
class UsageRecord:
    """One allocation row of ``sacct``: what Slurm's accounting says a job ran."""

    job_id: str
    name: str
    state: SlurmState
    elapsed_seconds: int  # ElapsedRaw: up to now for a running job, the final run time for a finished one
    allocation: Allocation
    keys: tuple[str, ...] = ()  # every id the row answers to (raw id, array task id)

    @property
    def finished(self) -> bool:
        """Slurm's accounting has the job's last word: its elapsed time will not change any more."""
        return self.state.base in FINISHED_BASE_STATES


@dataclass(frozen=True)
class Owner:
    """A wallet owner as Core's ``WalletOwner``: a project's jobs charge the project, others the user."""

    kind: str  # "user" | "project"
    reference: str  # the username or the project id

    @classmethod
    def of_job(cls, created_by: str, project: str | None) -> Owner:
        """Core's ``WalletOwnerFromIds(createdBy, project)``."""
        return cls("project", project) if project else cls("user", created_by)

    def to_wire(self) -> dict[str, str]:
        """Go's ``WalletOwner`` serialises all three keys, empty strings included."""
        if self.kind == "project":
            return {"type": "project", "username": "", "projectId": self.reference}
        return {"type": "user", "username": self.reference, "projectId": ""}


@dataclass(frozen=True)
class UsageSubject:
    """Whom a job charges, and in which category: recorded when the job is created."""

    owner: Owner
    category: str
    product: str


@dataclass(frozen=True)
class JobUsage:
    """What the provider has counted for one job so far; durable, and never decreasing."""

    ucloud_id: str
    slurm_id: str
    expected_name: str | None
    owner: Owner
    category: str
    product: str
    elapsed_seconds: int = 0
    resource_seconds: int = 0
    final: bool = False  # Slurm's accounting gave its last word (or we stopped waiting): never asked again
    held_since: int | None = None  # ms: since when the job map has the job final but sacct not yet


def resource_seconds(record: UsageRecord, unit: Unit) -> int:
    return record.allocation.amount(unit) * max(0, record.elapsed_seconds)


def matching_record(job: JobUsage, records: Mapping[str, UsageRecord]) -> UsageRecord | None:
    """The sacct row of this job, if it still carries the job's name (Slurm ids wrap)."""
    record = records.get(job.slurm_id)
    if record is None or (job.expected_name is not None and record.name != job.expected_name):
        return None
    return record


def next_usage(
    job: JobUsage,
    record: UsageRecord | None,
    *,
    unit: Unit | None,
    map_final: bool,
    now: int,
    give_up_ms: int,
) -> JobUsage:
    """A job's usage after one accounting pass. It only ever grows.

    - A finished sacct row is the job's last word: its usage, and the job is done (never asked again).
    - A running (or pending) row counts up to now, unless the job map already holds the job as
      finished: then sacct is behind (slurmdbd lags after an outage, and a running row would keep
      counting time the job no longer ran), so the count waits for sacct's finished row.
    - No row (slurmdbd lost it, or the id now belongs to another job) changes nothing; a job the map
      holds as finished is given up on after ``give_up_ms`` without a finished row.
    - ``unit`` None (the product's category is no longer configured) changes nothing.
    """
    if job.final:
        return job
    if record is None or unit is None:
        if map_final:
            since = job.held_since if job.held_since is not None else now
            return replace(job, held_since=since, final=now - since >= give_up_ms)
        return job
    counted = resource_seconds(record, unit)
    grown = replace(
        job,
        elapsed_seconds=max(job.elapsed_seconds, record.elapsed_seconds),
        resource_seconds=max(job.resource_seconds, counted),
    )
    if record.finished:
        return replace(grown, final=True, held_since=None)
    if map_final:
        since = job.held_since if job.held_since is not None else now
        return replace(job, held_since=since, final=now - since >= give_up_ms)
    return grown


def total_units(usages: Iterable[tuple[int, Rate]]) -> int:
    """``floor(sum(resource-seconds x price) / (period x scale))`` over one (owner, category)'s jobs.

    Every job of a category shares its unit and frequency; only a currency's price differs by
    product, so it is applied per job before the one truncation.
    """
    numerator = 0
    per_unit: int | None = None
    for resource_secs, rate in usages:
        numerator += resource_secs * rate.price
        per_unit = rate.per_unit if per_unit is None else per_unit
        if rate.per_unit != per_unit:
            raise ValueError("every product of a category must share its unit and frequency")
    return numerator // per_unit if per_unit else 0


@dataclass(frozen=True)
class TotalChange:
    """A new absolute total for one (owner, category), and whether it was held from going down."""

    total: int
    changed: bool
    held: bool  # the computation gave less than before (a lower price, a product gone): kept the old


def next_total(previous: int | None, computed: int) -> TotalChange:
    """Totals are monotonic: Core is never told a lower absolute usage than before."""
    if previous is None:
        return TotalChange(computed, changed=True, held=False)
    if computed < previous:
        return TotalChange(previous, changed=False, held=True)
    return TotalChange(computed, changed=computed != previous, held=False)


def usage_scope(provider_id: str, category: str, epoch: str) -> str:
    """The ``description.scope`` of a report: Core keeps one absolute usage per (owner, scope).

    Core's scope key is the owner and this string only (not the category), so it names the category;
    and it names the store's epoch, so a provider whose database was lost starts a new scope at 0
    beside the old one instead of telling Core a lower total for the old one.
    """
    return f"ucloud-slurm-provider/{provider_id}/{category}/{epoch}"


def report_item(owner: Owner, category: str, provider_id: str, total: int, scope: str) -> dict[str, object]:
    """One ``ReportUsageRequest`` exactly as Go's ``accounting.ReportUsageRequest`` serialises it."""
    return {
        "isDeltaCharge": False,
        "owner": owner.to_wire(),
        "categoryIdV2": {"name": category, "provider": provider_id},
        "usage": total,
        "description": {"scope": scope, "description": None},
    }
