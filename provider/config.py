"""Settings: TOML written by the cluster admin -> validated settings. Every error names the file and the key.

Every key has an embedded default, so ``serve`` runs with no file at all; ``config.example.toml``
documents each key. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from provider.paths import clean_cluster_root, clean_ucloud_prefix

DEFAULT_CONFIG_DIR = "/etc/ucloud-slurm-provider"
DEFAULT_STATE_DIR = "/var/lib/ucloud-slurm-provider"

PositiveSeconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSection(_Section):
    id: str = Field(default="slurm", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8889, ge=1, le=65535)
    # Request limits (provider/edge.py): sized so Core's largest bulk (1,000 full jobs, ~30 MB) passes.
    max_body_bytes: Annotated[int, Field(ge=64 * 1024)] = 64 * 1024 * 1024
    max_depth: Annotated[int, Field(ge=16, le=512)] = 32
    max_items: Annotated[int, Field(ge=1000)] = 10_000
    max_values: Annotated[int, Field(ge=10_000)] = 4_000_000
    max_string_bytes: Annotated[int, Field(ge=4096)] = 64 * 1024
    # Connections (provider/guard.py): every one is cut off when it stalls, and there are at most so many.
    idle_timeout: PositiveSeconds = 120.0  # a keep-alive connection with no request; above Go's 90 s idle
    header_timeout: PositiveSeconds = 10.0  # from a request's first byte to the end of its headers
    body_timeout: PositiveSeconds = 30.0  # to read a whole body (Core itself gives up after 5 s)
    max_connections: Annotated[int, Field(ge=8)] = 256


class UCloudSection(_Section):
    url: str = Field(default="http://127.0.0.1:8080", pattern=r"^https?://[^/\s]+(/.*)?$")
    refresh_token_file: Path = Path(DEFAULT_CONFIG_DIR) / "refresh_token"
    public_key_file: Path = Path(DEFAULT_CONFIG_DIR) / "ucloud_key.pub"
    timeout: PositiveSeconds = 10.0  # seconds for one call to Core


class SlurmSection(_Section):
    backend: Literal["auto", "pyslurm", "cli"] = "auto"
    cluster: str = ""  # a name for this cluster, stored with every job and in Core's job ids; "" = "slurm"
    conf: str = ""  # SLURM_CONF for every Slurm call; "" = inherit (or Slurm's own default)
    bin_dir: str = ""  # where squeue/sacct/sbatch live; "" = PATH
    query_timeout: PositiveSeconds = 30.0
    pyslurm_python: str = ""  # the interpreter for the pyslurm worker; "" = the daemon's own
    states: dict[str, str] = Field(default_factory=dict)  # Slurm state -> UCloud state or "KEEP"

    @field_validator("states")
    @classmethod
    def _known_targets(cls, states: dict[str, str]) -> dict[str, str]:
        allowed = {"IN_QUEUE", "RUNNING", "SUCCESS", "FAILURE", "EXPIRED", "SUSPENDED", "KEEP"}
        for slurm_state, target in states.items():
            if target.upper() not in allowed:
                raise ValueError(f"{slurm_state} = {target!r}: must be one of {', '.join(sorted(allowed))}")
        return {k.upper(): v.upper() for k, v in states.items()}


class StoreSection(_Section):
    path: Path = Path(DEFAULT_STATE_DIR) / "provider.sqlite3"


class ReconcileSection(_Section):
    interval: PositiveSeconds = 15.0  # seconds between the daemon's own passes over its active jobs
    max_interval: PositiveSeconds = 120.0  # the back-off ceiling while Slurm fails
    unknown_job_grace: Annotated[float, Field(ge=0)] = 60.0  # seconds a job Core knows but we don't is spared
    missing_checks: Annotated[int, Field(ge=1)] = 3
    missing_window: Annotated[float, Field(ge=0)] = 120.0
    missing_min_age: Annotated[float, Field(ge=0)] = 300.0
    confirm_interval: PositiveSeconds = 30.0  # seconds between confirming checks of a missing job
    outbox_batch: Annotated[int, Field(ge=1, le=100)] = 100
    outbox_max_backoff: PositiveSeconds = 60.0


class ProductSection(_Section):
    """One UCloud product (id, category) and the Slurm resources a job of it gets."""

    id: str = Field(min_length=1)
    category: str = Field(min_length=1)
    partition: str = ""  # "" = the cluster's default partition
    account: str = ""  # "" = the submitting user's default; "{project}" / "{username}" are filled in per job
    qos: str = ""
    cpus: Annotated[int, Field(ge=1)] = 1  # per node (--cpus-per-task, one task a node)
    memory_mb: Annotated[int, Field(ge=0)] = 0  # per node; 0 = the partition's default
    gpus: Annotated[int, Field(ge=0)] = 0  # per node
    max_nodes: Annotated[int, Field(ge=1)] = 1
    max_time_minutes: Annotated[int, Field(ge=1)] = 24 * 60
    time_extension: bool = True  # advertise and allow /jobs/extend
    logs: bool = True  # advertise the follow stream: users see the job's stdout and stderr live in UCloud
    # Usage accounting (one unit and frequency per category, as UCloud accounts per category).
    accounting_unit: Literal["cpu", "gpu", "memory", "money"] = "cpu"
    accounting_frequency: Literal["minute", "hour", "day"] = "minute"
    price: Annotated[float, Field(ge=0)] = 0.0  # money only: currency per node and period
    currency: str = ""  # money only: the unit's name, e.g. "DKK"
    description: str = ""  # shown by UCloud; "" = generated from the resources
    free_to_use: bool = False  # Core charges nothing for the category

    @model_validator(mode="after")
    def _accounting_fits(self) -> ProductSection:
        if self.accounting_unit == "money":
            if self.price <= 0 or not self.currency:
                raise ValueError("accounting_unit = \"money\" needs a price above 0 and a currency")
        elif self.price or self.currency:
            raise ValueError(
                f"price and currency are for accounting_unit = \"money\" only (this product charges {self.accounting_unit})"
            )
        if self.accounting_unit == "gpu" and self.gpus == 0:
            raise ValueError("accounting_unit = \"gpu\" but gpus = 0: every job would be free")
        if self.accounting_unit == "memory" and self.memory_mb == 0:
            raise ValueError("accounting_unit = \"memory\" needs memory_mb (the memory the product sells)")
        return self

    @field_validator("account")
    @classmethod
    def _known_placeholders(cls, account: str) -> str:
        try:
            account.format(project="p", username="u")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{project}} and {{username}} may appear in braces ({exc})") from None
        return account


ParameterType = Literal["text", "textarea", "integer", "floating_point", "boolean", "enumeration", "file"]


class ParameterSpec(_Section):
    type: ParameterType = "text"
    optional: bool = False
    title: str = ""  # shown on UCloud's job form when the provider offers the parameter itself; "" = the name
    description: str = ""


class ApplicationSection(_Section):
    """A UCloud application (name, version) and the admin's job script that runs it."""

    name: str = Field(min_length=1)
    version: str = "*"  # "*" = every version
    script: Path  # copied verbatim into the job folder; parameters arrive as UCLOUD_PARAM_<NAME>
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _names_fit_environment_variables(cls, params: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        for name in params:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name):
                raise ValueError(f"{name!r}: a parameter name is letters, digits, '_' and '-', starting with a letter")
        return params


class JobsSection(_Section):
    directory: Path = Path(DEFAULT_STATE_DIR) / "jobs"  # each job gets <directory>/<UCloud job id>/
    output_folder: str = ""  # the UCloud path sent as the job's output folder, e.g. "/{project}/jobs/{job_id}"; "" = none
    run_as: Literal["service", "owner"] = "service"  # who sbatch runs as: the daemon's user, or the job's owner
    user_template: str = "{username}"  # owner -> Unix user; {username} is the UCloud name before '#', lowercased
    users: dict[str, str] = Field(default_factory=dict)  # explicit UCloud username -> Unix user
    submit_timeout: PositiveSeconds = 4.0  # Core waits 5 s for create
    # A job's PATH. sbatch --export-file gives a job only the variables in its file (and Slurm's own),
    # so the daemon sets PATH, HOME, USER, LOGNAME and SHELL for it; srun's tasks inherit them.
    path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class AccountingSection(_Section):
    """Usage reports to Core: absolute totals per (owner, category), from sacct."""

    enabled: bool = True
    interval: PositiveSeconds = 30.0  # seconds between accounting passes (IM2: 30 s)
    batch: Annotated[int, Field(ge=1, le=1000)] = 500  # reports per request to Core (IM2: 500)
    on_exhausted: Literal["record", "cancel"] = "record"  # what Core's "false" does to the owner's running jobs
    give_up_after: PositiveSeconds = 86400.0  # seconds to wait for sacct's final record of a finished job


class FilesSection(_Section):
    """Where UCloud's files are on this cluster: UCloud path prefix -> cluster path.

    A job's ``file`` parameters and mounted folders arrive as UCloud paths (``/<drive id>/...``); each is
    mapped by the longest prefix that matches whole path components. A file outside every prefix is
    refused, so a job never starts on a path that does not exist here.
    """

    paths: dict[str, Path] = Field(default_factory=dict)

    @field_validator("paths")
    @classmethod
    def _clean_prefixes(cls, paths: dict[str, Path]) -> dict[str, Path]:
        cleaned: dict[str, Path] = {}
        for prefix, root in paths.items():
            key = clean_ucloud_prefix(prefix)
            if key in cleaned:
                raise ValueError(f"{prefix!r}: the same UCloud prefix appears twice")
            cleaned[key] = clean_cluster_root(prefix, root)
        return cleaned


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Section):
    provider: ProviderSection = ProviderSection()
    server: ServerSection = ServerSection()
    ucloud: UCloudSection = UCloudSection()
    slurm: SlurmSection = SlurmSection()
    store: StoreSection = StoreSection()
    reconcile: ReconcileSection = ReconcileSection()
    jobs: JobsSection = JobsSection()
    products: list[ProductSection] = Field(default_factory=list)
    applications: list[ApplicationSection] = Field(default_factory=list)
    accounting: AccountingSection = AccountingSection()
    files: FilesSection = FilesSection()
    logging: LoggingSection = LoggingSection()

    @model_validator(mode="after")
    def _unique_products(self) -> Settings:
        seen: set[tuple[str, str]] = set()
        for product in self.products:
            key = (product.id, product.category)
            if key in seen:
                raise ValueError(f"[[products]] {product.id} ({product.category}) appears twice")
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _one_accounting_per_category(self) -> Settings:
        """UCloud accounts per category: its products must agree on unit, frequency and currency."""
        first: dict[str, ProductSection] = {}
        for product in self.products:
            other = first.setdefault(product.category, product)
            for key in ("accounting_unit", "accounting_frequency", "currency", "free_to_use"):
                if getattr(product, key) != getattr(other, key):
                    raise ValueError(
                        f"[[products]] {product.id} and {other.id} are both in category {product.category!r} but"
                        f" differ in {key} ({getattr(product, key)!r} vs {getattr(other, key)!r}): UCloud accounts"
                        " per category"
                    )
        return self


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and what is wrong."""


# Sections that take effect on SIGHUP; a change anywhere else needs a restart.
RELOADABLE = ("logging", "products", "applications", "jobs")


class LiveSettings:
    """The one settings object every part of the running daemon reads.

    SIGHUP swaps ``current`` for a copy with the reloadable sections of the re-read file; parts that
    hold this object (the job service, the routes, the usage meter) see the change at once, so no part
    keeps a stale copy.
    """

    def __init__(self, settings: Settings) -> None:
        self.current = settings

    def reload(self, new: Settings) -> list[str]:
        """Apply ``new``'s reloadable sections; the names of the other sections that differ (restart)."""
        old = self.current
        restart = [name for name in type(new).model_fields if name not in RELOADABLE and getattr(new, name) != getattr(old, name)]
        self.current = old.model_copy(update={name: getattr(new, name) for name in RELOADABLE})
        return restart


def load_settings(path: str | Path | None) -> Settings:
    """Read and validate ``path``; ``None`` means the embedded defaults."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return settings_from_dict(raw, source=str(path))


def settings_from_dict(raw: dict[str, Any], source: str = "<config>") -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{source}: {_key(err['loc'])}: {_message(err)}" for err in exc.errors()]
        raise ConfigError("\n".join(problems)) from None


def _key(loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and isinstance(loc[1], int):  # an array of tables: [[products]] number n
        rest = ".".join(str(p) for p in loc[2:])
        return f"[[{loc[0]}]] #{loc[1] + 1}" + (f" {rest}" if rest else "")
    parts = [str(p) for p in loc]
    if len(parts) >= 2:
        return f"[{parts[0]}] {'.'.join(parts[1:])}"
    return f"[{parts[0]}]" if parts else "(top level)"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling against config.example.toml)"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def read_refresh_token(ucloud: UCloudSection) -> str:
    """The provider's refresh token; refused if other users could read it (it is the provider's password)."""
    path = ucloud.refresh_token_file
    key = "[ucloud] refresh_token_file"
    try:
        if path.stat().st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigError(f"{key}: {path} is readable by other users; run: chmod o-rwx {path}")
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: {path}: cannot be read: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"{key}: {path} is empty")
    return token
