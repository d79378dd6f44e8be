"""Wire models: the seed's payload parses as it is; updates serialise exactly as the seed shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from provider.ucloud.models import BulkRequest, Job, JobState, JobUpdate, ResourceUpdateAndId

DATA = Path(__file__).parent / "data"


def test_seed_verify_payload_parses_exactly_as_it_is() -> None:
    bulk = BulkRequest[Job].model_validate_json((DATA / "seed_verify_request.json").read_text())
    (job,) = bulk.items
    assert (job.id, job.created_at, job.status.state) == ("54112", 1633329776235, JobState.RUNNING)
    assert job.specification.parameters is not None
    assert job.specification.parameters["value"].model_extra == {"value": "Hello, World!"}
    assert job.specification.time_allocation is not None and job.specification.time_allocation.total_seconds() == 3600


def test_seed_update_serialises_byte_for_byte_but_the_timestamp() -> None:
    seed = json.loads((DATA / "seed_update_request.json").read_text())
    ours = ResourceUpdateAndId(
        id="54112", update=JobUpdate(state=JobState.FAILURE, status="Your job is no longer available", timestamp=0)
    ).to_wire()
    assert json.dumps({"items": [ours]}, indent=4) == json.dumps(seed, indent=4)


def test_unknown_fields_are_ignored() -> None:
    raw = json.loads((DATA / "seed_verify_request.json").read_text())
    raw["items"][0]["somethingNew"] = {"x": 1}
    raw["items"][0]["status"]["resolvedProduct"] = {"cpu": 4}
    assert BulkRequest[Job].model_validate(raw).items[0].id == "54112"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j["status"].__setitem__("state", "EXPLODED"),
        lambda j: j.__setitem__("createdAt", 1.5),
        lambda j: j.__setitem__("createdAt", None),
        lambda j: j.pop("id"),
        lambda j: j.__setitem__("id", ""),
    ],
    ids=["bad-state", "float-time", "null-time", "no-id", "empty-id"],
)
def test_malformed_jobs_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((DATA / "seed_verify_request.json").read_text())
    mutate(raw["items"][0])
    with pytest.raises(ValidationError):
        BulkRequest[Job].model_validate(raw)


@pytest.mark.parametrize("bad", [{"timestamp": 1.5}, {"timestamp": None}, {"timestamp": True}, {"new_time_allocation": 60.0}])
def test_timestamps_and_allocations_must_be_integers(bad: dict[str, object]) -> None:
    with pytest.raises(TypeError, match="must be an integer"):
        JobUpdate(**bad)  # type: ignore[arg-type]
