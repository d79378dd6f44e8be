"""UCloud's wire models for jobs: what UCloud/Core sends the provider and what the provider sends back.

Shapes follow UCloud/Core's Go API (``provider-integration/shared/pkg/orchestrators/jobs.go``) and the
Kotlin-era documentation. Inbound models ignore unknown fields (Core adds fields over time) and accept
``null`` wherever Core may send it; outbound models serialise every key, ``null`` included, exactly
as the seed example shows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt

T = TypeVar("T")


class JobState(str, enum.Enum):
    """A UCloud job state. SUCCESS, FAILURE and EXPIRED are final: Core never leaves them."""

    IN_QUEUE = "IN_QUEUE"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    EXPIRED = "EXPIRED"
    SUSPENDED = "SUSPENDED"
    # Known only to the retired Kotlin Core; accepted inbound, never sent.
    CANCELING = "CANCELING"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.EXPIRED})


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ResourceOwner(_Inbound):
    created_by: str = Field(default="", alias="createdBy")  # Go: omitempty, so absent when empty
    project: str | None = None


class NameAndVersion(_Inbound):
    name: str
    version: str


class ProductReference(_Inbound):
    id: str
    category: str
    provider: str


class SimpleDuration(_Inbound):
    hours: StrictInt = 0
    minutes: StrictInt = 0
    seconds: StrictInt = 0

    def total_seconds(self) -> int:
        return self.hours * 3600 + self.minutes * 60 + self.seconds


class AppParameterValue(_Inbound):
    """One parameter or resource value; only ``type`` is common to all, the rest depends on it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: str


class JobSpecification(_Inbound):
    application: NameAndVersion
    product: ProductReference
    name: str | None = None
    replicas: StrictInt = 1
    allow_duplicate_job: bool | None = Field(default=None, alias="allowDuplicateJob")
    parameters: dict[str, AppParameterValue] | None = None
    resources: list[AppParameterValue] | None = None
    time_allocation: SimpleDuration | None = Field(default=None, alias="timeAllocation")
    opened_file: str | None = Field(default=None, alias="openedFile")
    restart_on_exit: bool | None = Field(default=None, alias="restartOnExit")
    ssh_enabled: bool | None = Field(default=None, alias="sshEnabled")


class JobStatus(_Inbound):
    state: JobState
    started_at: StrictInt | None = Field(default=None, alias="startedAt")
    expires_at: StrictInt | None = Field(default=None, alias="expiresAt")
    allow_restart: bool | None = Field(default=None, alias="allowRestart")


class Job(_Inbound):
    """A UCloud job as Core sends it to the provider (create, verify, terminate, ...)."""

    id: str = Field(min_length=1)
    created_at: StrictInt = Field(alias="createdAt")
    owner: ResourceOwner
    specification: JobSpecification
    status: JobStatus
    provider_generated_id: str | None = Field(default=None, alias="providerGeneratedId")
    updates: list[dict[str, Any]] | None = None


class VerifyStatus(_Inbound):
    state: JobState


class VerifiedJob(_Inbound):
    """A Job in a verify, read for what verify needs: its id, Core's state and when it was created.

    Verify carries Core's whole Job for every active job (some 7 KB each); the rest of it is not read,
    so it is not validated either (a verify of 1,024 jobs is 7.5 MB of JSON).
    """

    id: str = Field(min_length=1)
    created_at: StrictInt = Field(alias="createdAt")
    status: VerifyStatus


class ApplicationParameterName(_Inbound):
    """One of an application's own parameters; the provider reads only its name."""

    name: str


class ApplicationInvocation(_Inbound):
    parameters: list[ApplicationParameterName] | None = None


class ApplicationMetadata(_Inbound):
    name: str
    version: str


class Application(_Inbound):
    """UCloud's application as Core sends it (``orchestrators/applications.go``); only what we read."""

    metadata: ApplicationMetadata
    invocation: ApplicationInvocation | None = None


class DynamicParametersRequest(_Inbound):
    """``/jobs/requestDynamicParameters``: which parameters this provider adds to ``application``'s form."""

    owner: ResourceOwner
    application: Application


class IntegrationInitRequest(_Inbound):
    """``/integration/init``: Core's retry hook when a call on a user's behalf got 449 or 503."""

    username: str = ""


class ExtendRequest(_Inbound):
    """One item of ``/jobs/extend``: the job and the time to add to its allocation."""

    job: Job
    requested_time: SimpleDuration = Field(alias="requestedTime")


class BulkRequest(_Inbound, Generic[T]):
    """``{"items": [...]}``: the envelope of almost every UCloud call."""

    items: list[T]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobUpdate:
    """One update for ``/api/jobs/control/update``.

    Every key is always serialised, ``null`` included, in the order of the seed example, and
    ``timestamp`` is an integer (Core's Go decoder rejects floats and ``null``; Core overwrites it).
    A plain dataclass rather than a pydantic model: the provider only builds updates (a pass after an
    outage builds thousands) and never parses one, and its integers are checked here.
    """

    state: JobState | None = None
    output_folder: str | None = None
    status: str | None = None
    expected_state: JobState | None = None
    expected_different_state: bool | None = None
    new_time_allocation: int | None = None
    allow_restart: bool | None = None
    new_mounts: list[Any] | None = None
    timestamp: int = 0

    def __post_init__(self) -> None:
        for name in ("timestamp", "new_time_allocation"):
            value = getattr(self, name)
            if (value is not None or name == "timestamp") and (type(value) is not int):
                raise TypeError(f"JobUpdate.{name} must be an integer, not {value!r}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "state": self.state.value if self.state is not None else None,
            "outputFolder": self.output_folder,
            "status": self.status,
            "expectedState": self.expected_state.value if self.expected_state is not None else None,
            "expectedDifferentState": self.expected_different_state,
            "newTimeAllocation": self.new_time_allocation,
            "allowRestart": self.allow_restart,
            "newMounts": self.new_mounts,
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True, slots=True)
class ResourceUpdateAndId:
    id: str
    update: JobUpdate

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "update": self.update.to_wire()}


class ErrorBody(BaseModel):
    """UCloud's error body. Core reads only ``why`` and ``errorCode``."""

    model_config = ConfigDict(populate_by_name=True)

    status_code: int = Field(alias="statusCode")
    why: str
    error_code: str = Field(default="", alias="errorCode")
    detailed_code: int = Field(default=0, alias="detailedCode")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


NO_LONGER_AVAILABLE = "Your job is no longer available"
