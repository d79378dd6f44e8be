"""Turning a UCloud job into a Slurm submission: product, application, parameters -> sbatch arguments.

Pure: no files, no processes. Every refusal is a ``RequestRefused`` whose message is shown to the
UCloud user as it is, so it says what to change. Parameter values never become script text: they
reach the job as environment variables (``UCLOUD_PARAM_<NAME>``), so no value can inject shell code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider.config import ApplicationSection, JobsSection, ProductSection
from provider.ucloud.models import AppParameterValue, Job

UCLOUD_COMMENT = "UCloud job"
_ACCOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNIX_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


class RequestRefused(Exception):
    """A job this provider cannot run; the message is for the UCloud user."""


@dataclass(frozen=True)
class Submission:
    """Everything needed to submit one job: where, as whom, with which arguments and environment."""

    ucloud_id: str
    folder: Path
    script: Path  # the admin's template, copied verbatim to <folder>/job.sh
    argv: tuple[str, ...]  # sbatch and its options, without the script path
    environment: Mapping[str, str]  # UCLOUD_* variables for the job
    unix_user: str | None  # None = the daemon's own user
    account: str
    time_limit_seconds: int


def find_product(products: Sequence[ProductSection], job: Job) -> ProductSection:
    ref = job.specification.product
    for product in products:
        if product.id == ref.id and product.category == ref.category:
            return product
    raise RequestRefused(f"The product {ref.id} ({ref.category}) is not offered by this provider")


def find_application(applications: Sequence[ApplicationSection], job: Job) -> ApplicationSection:
    app = job.specification.application
    for candidate in applications:
        if candidate.name == app.name and candidate.version in ("*", app.version):
            return candidate
    raise RequestRefused(f"The application {app.name} {app.version} is not available on this provider")


def acting_username(header: str | None, job: Job) -> str:
    """The UCloud user behind a call: Core's ``ucloud-username`` header (base64), else the job's owner."""
    if header:
        try:
            return base64.b64decode(header, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RequestRefused("The ucloud-username header is not valid base64") from None
    return job.owner.created_by


def unix_user_for(username: str, jobs: JobsSection) -> str:
    """The Unix user that runs a job of ``username`` when jobs run as their owner."""
    user = jobs.users.get(username)
    if user is None:
        short = username.split("#", 1)[0].lower()
        user = jobs.user_template.format(username=short)
    if not _UNIX_USER.match(user):
        raise RequestRefused(f"Your UCloud user {username!r} has no account on this cluster")
    return user


def format_time(seconds: int) -> str:
    """Slurm's ``D-HH:MM:SS``; Slurm rounds limits up to whole minutes."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def time_limit_seconds(job: Job, product: ProductSection) -> int:
    allocation = job.specification.time_allocation
    limit = product.max_time_minutes * 60
    if allocation is None:
        return limit
    seconds = allocation.total_seconds()
    if seconds <= 0:
        raise RequestRefused("The requested time allocation must be longer than zero")
    if seconds > limit:
        raise RequestRefused(
            f"The requested time ({format_time(seconds)}) is longer than this product allows ({format_time(limit)})"
        )
    return seconds


def parameter_environment(app: ApplicationSection, parameters: Mapping[str, AppParameterValue] | None) -> dict[str, str]:
    """``UCLOUD_PARAM_<NAME>`` for every parameter, checked against the application's declaration."""
    given = dict(parameters or {})
    env: dict[str, str] = {}
    for name in given:
        if name not in app.parameters:
            raise RequestRefused(f"The application {app.name} has no parameter '{name}'")
    for name, spec in app.parameters.items():
        value = given.get(name)
        if value is None:
            if not spec.optional:
                raise RequestRefused(f"The parameter '{name}' is required")
            continue
        env[f"UCLOUD_PARAM_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}"] = _value_text(name, spec.type, value)
    return env


def _value_text(name: str, expected: str, value: AppParameterValue) -> str:
    extra: dict[str, Any] = value.model_extra or {}
    kinds = {"textarea": "text", "enumeration": "text"}
    if kinds.get(value.type, value.type) != kinds.get(expected, expected):
        raise RequestRefused(f"The parameter '{name}' must be of type {expected}, not {value.type}")
    if value.type == "file":
        path = extra.get("path")
        if not isinstance(path, str) or not path:
            raise RequestRefused(f"The parameter '{name}' needs a file path")
        return path
    raw = extra.get("value")
    if expected == "boolean":
        if not isinstance(raw, bool):
            raise RequestRefused(f"The parameter '{name}' must be true or false")
        return "true" if raw else "false"
    if expected == "integer":
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise RequestRefused(f"The parameter '{name}' must be a whole number")
        return str(raw)
    if expected == "floating_point":
        if not isinstance(raw, (int, float)) or isinstance(raw, bool):
            raise RequestRefused(f"The parameter '{name}' must be a number")
        return repr(float(raw))
    if not isinstance(raw, str):
        raise RequestRefused(f"The parameter '{name}' must be text")
    if "\x00" in raw:
        raise RequestRefused(f"The parameter '{name}' contains a NUL character")
    return raw


def slurm_account(product: ProductSection, job: Job, username: str) -> str:
    if not product.account:
        return ""
    if "{project}" in product.account and not job.owner.project:
        raise RequestRefused(f"The product {product.id} can only be used in a project")
    account = product.account.format(project=job.owner.project or "", username=username.split("#", 1)[0].lower())
    if not _ACCOUNT.match(account):
        raise RequestRefused(f"No Slurm account can be derived for this job ({account!r})")
    return account


def plan_submission(
    job: Job,
    *,
    products: Sequence[ProductSection],
    applications: Sequence[ApplicationSection],
    jobs: JobsSection,
    provider_id: str,
    username: str,
    sbatch: str = "sbatch",
) -> Submission:
    """Check the job against the admin's products and applications and build its sbatch call."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", job.id):
        raise RequestRefused(f"The job id {job.id!r} cannot name a Slurm job")
    product = find_product(products, job)
    app = find_application(applications, job)
    replicas = job.specification.replicas
    if replicas < 1:
        raise RequestRefused("A job needs at least one node")
    if replicas > product.max_nodes:
        raise RequestRefused(f"Too many nodes requested: {replicas} (the product {product.id} allows {product.max_nodes})")
    seconds = time_limit_seconds(job, product)
    env = parameter_environment(app, job.specification.parameters)
    unix_user = unix_user_for(username, jobs) if jobs.run_as == "owner" else None
    account = slurm_account(product, job, username)
    folder = jobs.directory / job.id
    env.update(
        {
            "UCLOUD_JOB_ID": job.id,
            "UCLOUD_PROVIDER_ID": provider_id,
            "UCLOUD_USERNAME": username,
            "UCLOUD_PROJECT": job.owner.project or "",
            "UCLOUD_APPLICATION": f"{job.specification.application.name}/{job.specification.application.version}",
            "UCLOUD_PRODUCT": f"{product.id}/{product.category}",
            "UCLOUD_NODES": str(replicas),
        }
    )
    argv = [
        sbatch,
        "--parsable",
        f"--job-name={job.id}",
        f"--comment={UCLOUD_COMMENT}",
        "--no-requeue",
        f"--nodes={replicas}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={product.cpus}",
        f"--time={format_time(seconds)}",
        f"--chdir={folder}",
        f"--output={folder}/stdout.txt",
        f"--error={folder}/stderr.txt",
        "--export=ALL",
    ]
    if product.partition:
        argv.append(f"--partition={product.partition}")
    if account:
        argv.append(f"--account={account}")
    if product.qos:
        argv.append(f"--qos={product.qos}")
    if product.memory_mb:
        argv.append(f"--mem={product.memory_mb}M")
    if product.gpus:
        argv.append(f"--gpus-per-node={product.gpus}")
    return Submission(job.id, folder, app.script, tuple(argv), env, unix_user, account, seconds)


def explain_sbatch_error(stderr: str) -> str:
    """Slurm's refusal, in words a UCloud user can act on (after IM2's mapping), with Slurm's own text."""
    text = " ".join(line.removeprefix("sbatch: error: ").strip() for line in stderr.strip().splitlines())
    lowered = text.lower()
    if "time limit" in lowered:
        hint = "The requested time limit is larger than what the system allows"
    elif "node count specification invalid" in lowered or "more processors" in lowered:
        hint = "Too many nodes requested"
    elif "requested node config" in lowered or "memory specification" in lowered:
        hint = "The requested resources are not available on this cluster"
    elif "invalid account" in lowered or "invalid qos" in lowered or "association" in lowered:
        hint = "You have no valid Slurm account for this product"
    elif "unable to contact slurm controller" in lowered:
        hint = "The cluster's scheduler is not answering; please try again later"
    else:
        hint = "Slurm refused the job"
    return f"{hint} ({text})" if text else hint
