"""Planning a submission: what the admin configured decides what sbatch gets; what users send never
becomes script text."""

from __future__ import annotations

from pathlib import Path

import pytest

from provider.config import settings_from_dict
from provider.submission import (
    RequestRefused,
    explain_sbatch_error,
    format_time,
    plan_extension,
    plan_submission,
    unix_user_for,
)
from provider.ucloud.devcore import job_body
from provider.ucloud.models import Job

SETTINGS = settings_from_dict(
    {
        "jobs": {"directory": "/srv/jobs"},
        "products": [
            {"id": "cpu-4", "category": "cpu", "partition": "normal", "account": "{project}", "cpus": 4,
             "memory_mb": 8000, "gpus": 1, "max_nodes": 2, "max_time_minutes": 120},
        ],
        "applications": [
            {"name": "sim", "version": "*", "script": "/etc/apps/sim.sh",
             "parameters": {"steps": {"type": "integer"}, "label": {"type": "text", "optional": True},
                            "fast": {"type": "boolean", "optional": True}, "input-file": {"type": "file", "optional": True}}},
        ],
    }
)
FILES = {"/1234": Path("/gpfs/acme")}
SECTIONS = dict(
    products=SETTINGS.products, applications=SETTINGS.applications, jobs=SETTINGS.jobs, provider_id="slurm", files=FILES
)


def job(**kw: object) -> Job:
    base: dict[str, object] = dict(
        application=("sim", "2.0"), product=("cpu-4", "cpu"), project="p-123",
        parameters={"steps": {"type": "integer", "value": 10}}, time_allocation=(1, 30, 0),
    )
    base.update(kw)
    return Job.model_validate(job_body("4242", **base))  # type: ignore[arg-type]


def test_the_product_decides_the_sbatch_options() -> None:
    plan = plan_submission(job(replicas=2), username="donna#1234", **SECTIONS)  # type: ignore[arg-type]
    assert plan.argv == (
        "sbatch", "--parsable", "--job-name=4242", "--comment=UCloud job", "--no-requeue", "--nodes=2",
        "--ntasks-per-node=1", "--cpus-per-task=4", "--time=0-01:30:00", "--chdir=/srv/jobs/4242",
        "--output=/srv/jobs/4242/stdout.txt", "--error=/srv/jobs/4242/stderr.txt", "--export=ALL",
        "--partition=normal", "--account=p-123", "--mem=8000M", "--gpus-per-node=1",
    )
    assert plan.folder == Path("/srv/jobs/4242") and plan.unix_user is None


def test_parameters_become_environment_variables_verbatim() -> None:
    evil = "$(touch /tmp/pwned); \"quoted\" 'x'\n`id`"
    plan = plan_submission(
        job(parameters={"steps": {"type": "integer", "value": 3}, "label": {"type": "text", "value": evil},
                        "fast": {"type": "boolean", "value": False}, "input-file": {"type": "file", "path": "/1234/a b"}}),
        username="u", **SECTIONS,  # type: ignore[arg-type]
    )
    assert plan.environment["UCLOUD_PARAM_LABEL"] == evil
    assert plan.environment["UCLOUD_PARAM_STEPS"] == "3"
    assert plan.environment["UCLOUD_PARAM_FAST"] == "false"
    assert plan.environment["UCLOUD_PARAM_INPUT_FILE"] == "/gpfs/acme/a b"
    assert not any(evil in arg for arg in plan.argv)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"product": ("gpu-9", "gpu")}, "The product gpu-9 (gpu) is not offered by this provider"),
        ({"application": ("other", "1")}, "The application other 1 is not available on this provider"),
        ({"parameters": {}}, "The parameter 'steps' is required"),
        ({"parameters": {"steps": {"type": "text", "value": "x"}}}, "The parameter 'steps' must be of type integer, not text"),
        ({"parameters": {"steps": {"type": "integer", "value": 1}, "input-file": {"type": "file", "path": "/99/x"}}},
         "The file /99/x is not available on this cluster: its drive is not one of the folders this provider "
         "mounts (ask the provider's administrators, or copy the file to a drive of this provider) "
         "(the parameter 'input-file')"),
        ({"parameters": {"steps": {"type": "integer", "value": 1.5}}}, "The parameter 'steps' must be a whole number"),
        ({"replicas": 3}, "Too many nodes requested: 3 (the product cpu-4 allows 2)"),
        ({"time_allocation": (3, 0, 0)}, "The requested time (0-03:00:00) is longer than this product allows (0-02:00:00)"),
        ({"time_allocation": (0, 0, 0)}, "The requested time allocation must be longer than zero"),
        ({"project": None}, "The product cpu-4 can only be used in a project"),
    ],
)
def test_refusals_say_what_to_change(change: dict[str, object], why: str) -> None:
    with pytest.raises(RequestRefused) as err:
        plan_submission(job(**change), username="u", **SECTIONS)  # type: ignore[arg-type]
    assert str(err.value) == why


def test_no_time_allocation_means_the_products_limit() -> None:
    plan = plan_submission(job(time_allocation=None), username="u", **SECTIONS)  # type: ignore[arg-type]
    assert "--time=0-02:00:00" in plan.argv


def test_owner_mapping() -> None:
    jobs = settings_from_dict({"jobs": {"run_as": "owner", "users": {"Odd Name#1": "odd"}}}).jobs
    assert unix_user_for("donna#1234", jobs) == "donna"
    assert unix_user_for("Odd Name#1", jobs) == "odd"
    with pytest.raises(RequestRefused, match="has no account on this cluster"):
        unix_user_for("../root#1", jobs)


def test_format_time() -> None:
    assert format_time(90) == "0-00:01:30" and format_time(86400 + 3661) == "1-01:01:01"


@pytest.mark.parametrize(
    ("stderr", "start"),
    [
        ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)\n",
         "The requested time limit is larger than what the system allows"),
        ("sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: "
         "Requested node configuration is not available\n", "The requested resources are not available"),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified\n",
         "You have no valid Slurm account for this product"),
        ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n",
         "The cluster's scheduler is not answering"),
        ("sbatch: error: something new\n", "Slurm refused the job (something new)"),
    ],
)
def test_sbatch_errors_become_sentences_with_slurms_own_words(stderr: str, start: str) -> None:
    why = explain_sbatch_error(stderr)
    assert why.startswith(start) and "sbatch: error" not in why


@pytest.mark.parametrize(
    ("allowed", "allocation", "extra", "outcome"),
    [
        (True, (1, 30, 0), 1800, 7200),  # 1 h 30 + 30 min = the product's 2 h maximum
        (True, None, 60, "longer than this product allows (0-02:00:00)"),  # no allocation: already at the maximum
        (True, (1, 30, 0), 1801, "The new time allocation (0-02:00:01) is longer"),
        (True, (1, 0, 0), 0, "must be longer than zero"),
        (False, (1, 0, 0), 60, "Extension of jobs is not supported for this product"),
    ],
)
def test_an_extension_is_planned_from_the_allocation_core_gave(
    allowed: bool, allocation: tuple[int, int, int] | None, extra: int, outcome: int | str
) -> None:
    product = SETTINGS.products[0].model_copy(update={"time_extension": allowed})
    if isinstance(outcome, int):
        assert plan_extension(job(time_allocation=allocation), product, extra) == outcome
    else:
        with pytest.raises(RequestRefused, match=outcome.replace("(", r"\(").replace(")", r"\)")):
            plan_extension(job(time_allocation=allocation), product, extra)
