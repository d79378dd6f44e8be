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
from provider.paths import UnmappedPath, map_ucloud_path
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
    ignored_parameters: tuple[str, ...] = ()  # given by Core, not declared by the admin: not passed on


def find_product(products: Sequence[ProductSection], job: Job) -> ProductSection:
    ref = job.specification.product
    for product in products:
        if product.id == ref.id and product.category == ref.category:
            return product
    raise RequestRefused(f"The product {ref.id} ({ref.category}) is not offered by this provider")


def match_application(applications: Sequence[ApplicationSection], name: str, version: str) -> ApplicationSection | None:
    for candidate in applications:
        if candidate.name == name and candidate.version in ("*", version):
            return candidate
    return None


def find_application(applications: Sequence[ApplicationSection], job: Job) -> ApplicationSection:
    app = job.specification.application
    found = match_application(applications, app.name, app.version)
    if found is None:
        raise RequestRefused(f"The application {app.name} {app.version} is not available on this provider")
    return found


# Parameters Core adds to every job by itself, undeclared by any application (core2/pkg/orchestrator/
# job.go, JobCreate: ``ucMetricSampleRate`` is the user's job-report sample rate, "0ms" = off), and the
# variable each reaches the script as.
CORE_INJECTED = {"ucMetricSampleRate": "UCLOUD_METRIC_SAMPLE_RATE"}
CORE_INJECTED_DEFAULTS = {"UCLOUD_METRIC_SAMPLE_RATE": "0ms"}
_SAMPLE_RATE = re.compile(r"^[0-9]{1,9}ms$")


# [applications.parameters] type -> UCloud's ApplicationParameterType. An enumeration has no options in
# our settings, so the form offers it as text (Core checks both the same way: a text value).
_FORM_TYPES = {
    "text": "text",
    "textarea": "textarea",
    "integer": "integer",
    "floating_point": "floating_point",
    "boolean": "boolean",
    "enumeration": "text",
    "file": "input_file",
}


def dynamic_parameters(
    applications: Sequence[ApplicationSection], name: str, version: str, declared_by_ucloud: set[str]
) -> list[dict[str, Any]]:
    """The parameters this provider adds to an application's form on UCloud (``requestDynamicParameters``).

    Those the admin declared for the application and UCloud's application lacks (but not Core's own,
    which Core adds to every job): without them Core refuses such a parameter as unknown. UCloud's
    own declarations are never overridden (Core lets a dynamic parameter replace one of the same
    name). Each is an ``ApplicationParameter`` exactly as Go encodes it: every key present.
    """
    app = match_application(applications, name, version)
    if app is None:
        return []
    return [
        {
            "type": _FORM_TYPES[spec.type],
            "name": param,
            "optional": spec.optional,
            "defaultValue": None,
            "title": spec.title or param,
            "description": spec.description,
            "min": None,
            "max": None,
            "step": None,
            "unitName": "",
            "trueValue": "",
            "falseValue": "",
            "options": None,
            "tagged": None,
            "supportedModules": None,
        }
        for param, spec in app.parameters.items()
        if param not in declared_by_ucloud and param not in CORE_INJECTED  # Core fills those in itself
    ]


def acting_username(header: str | None, job: Job) -> str:
    """The UCloud user behind a call: Core's ``ucloud-username`` header (base64), else the job's owner."""
    if header:
        try:
            return base64.b64decode(header, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RequestRefused("The ucloud-username header is not valid base64") from None
    if not job.owner.created_by:  # Go omits an empty createdBy; Core names the user in the header
        raise RequestRefused("The request does not say which UCloud user it is for")
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


def plan_extension(job: Job, product: ProductSection, requested_seconds: int) -> int:
    """The job's new total time limit in seconds after an extension by ``requested_seconds``.

    The current total is what Core says the job was given (the product's maximum if it gave none);
    the new total may not pass the product's maximum, and products must allow extension at all.
    """
    if not product.time_extension:
        raise RequestRefused("Extension of jobs is not supported for this product")
    if requested_seconds <= 0:
        raise RequestRefused("The requested extension must be longer than zero")
    limit = product.max_time_minutes * 60
    allocation = job.specification.time_allocation
    total = (allocation.total_seconds() if allocation else limit) + requested_seconds
    if total > limit:
        raise RequestRefused(
            f"The new time allocation ({format_time(total)}) is longer than this product allows ({format_time(limit)})"
        )
    return total


@dataclass(frozen=True)
class ParameterPlan:
    """What a job's parameters and resources become: the script's environment, and what was left out."""

    environment: dict[str, str]
    ignored: tuple[str, ...]  # names (or resource types) given but not declared: they never reach the script


def parameter_variable(name: str) -> str:
    return f"UCLOUD_PARAM_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}"


def parameter_environment(
    app: ApplicationSection,
    parameters: Mapping[str, AppParameterValue] | None,
    resources: Sequence[AppParameterValue] | None = None,
    files: Mapping[str, Path] | None = None,
) -> ParameterPlan:
    """The script's environment from a job's parameters and resources, checked against the admin's application.

    The rule (after UCloud's IM2, ``job_parameters.go``): Core has already checked the user's values
    against the UCloud application, and adds parameters of its own, so a parameter the admin did not
    declare never refuses a job and never reaches the script. Declared ones are checked (type, required)
    and become ``UCLOUD_PARAM_<NAME>``; Core's own ones that mean something become a documented
    ``UCLOUD_*`` variable (``CORE_INJECTED``). Files and mounted folders are mapped to cluster paths.
    """
    given = dict(parameters or {})
    table = files or {}
    env: dict[str, str] = dict(CORE_INJECTED_DEFAULTS)
    ignored: list[str] = []
    for name, value in given.items():
        variable = CORE_INJECTED.get(name)
        raw = (value.model_extra or {}).get("value")
        if variable is not None and value.type == "text" and isinstance(raw, str) and _SAMPLE_RATE.match(raw):
            env[variable] = raw  # also when the admin declared it: then it is a UCLOUD_PARAM_ as well
        elif name not in app.parameters:
            ignored.append(name)
    for name, spec in app.parameters.items():
        declared = given.get(name)
        if declared is None:
            if not spec.optional:
                raise RequestRefused(f"The parameter '{name}' is required")
            continue
        env[parameter_variable(name)] = _value_text(name, spec.type, declared, table)
    mounts, read_only = [], []
    for resource in resources or ():
        if resource.type != "file":
            ignored.append(f"resource:{resource.type}")
            continue
        path = _mapped_file("a mounted folder", resource, table)
        mounts.append(path)
        if (resource.model_extra or {}).get("readOnly") is True:
            read_only.append(path)
    env["UCLOUD_MOUNTS"] = "\n".join(mounts)
    env["UCLOUD_READONLY_MOUNTS"] = "\n".join(read_only)
    return ParameterPlan(env, tuple(ignored))


def _mapped_file(what: str, value: AppParameterValue, files: Mapping[str, Path]) -> str:
    path = (value.model_extra or {}).get("path")
    if not isinstance(path, str) or not path:
        raise RequestRefused(f"{what[0].upper()}{what[1:]} has no file path")
    try:
        return str(map_ucloud_path(path, files))
    except UnmappedPath as exc:
        raise RequestRefused(f"{exc} ({what})") from None


def _value_text(name: str, expected: str, value: AppParameterValue, files: Mapping[str, Path]) -> str:
    extra: dict[str, Any] = value.model_extra or {}
    kinds = {"textarea": "text", "enumeration": "text"}
    if kinds.get(value.type, value.type) != kinds.get(expected, expected):
        raise RequestRefused(f"The parameter '{name}' must be of type {expected}, not {value.type}")
    if value.type == "file":
        return _mapped_file(f"the parameter '{name}'", value, files)
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
    files: Mapping[str, Path] | None = None,
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
    parameters = parameter_environment(app, job.specification.parameters, job.specification.resources, files)
    env = parameters.environment
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
    return Submission(job.id, folder, app.script, tuple(argv), env, unix_user, account, seconds, parameters.ignored)


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
