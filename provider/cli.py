"""The command line: ``serve``, ``check-config``, ``jobs list|track|untrack``, ``verify --dry-run``,
``products register|list``, ``usage``, ``dev-core``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

from provider.config import DEFAULT_CONFIG_DIR, ConfigError, Settings, load_settings, read_refresh_token
from provider.logs import configure_logging
from provider.slurm.select import BackendUnavailable, close_backend, open_backend, select_backend
from provider.slurm.types import is_valid_slurm_id
from provider.store import Store, StoreError
from provider.sync import PassReport, now_ms, synchronizer_from_settings
from provider.ucloud.auth import PublicKeyError, load_public_key

if TYPE_CHECKING:
    from provider.ucloud.core import CoreClient

log = structlog.get_logger(__name__)
T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return int(args.func(args))
    except (ConfigError, PublicKeyError, BackendUnavailable, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ucloud-slurm-provider", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", type=Path, default=None, help="TOML settings (default: embedded defaults)")
        return p

    serve = with_config(sub.add_parser("serve", help="run the provider daemon"))
    serve.set_defaults(func=cmd_serve)

    check = with_config(sub.add_parser("check-config", help="validate the settings and the files they name"))
    check.set_defaults(func=cmd_check_config)

    jobs = sub.add_parser("jobs", help="inspect and edit the job map")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = with_config(jobs_sub.add_parser("list", help="every tracked job"))
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(func=cmd_jobs_list)
    track = with_config(jobs_sub.add_parser("track", help="map a UCloud job to an existing Slurm job"))
    track.add_argument("ucloud_id")
    track.add_argument("slurm_id")
    track.add_argument("--name", help="the Slurm job name that proves identity (default: the name Slurm reports)")
    track.add_argument("--force", action="store_true", help="track even if Slurm does not know the job now")
    track.set_defaults(func=cmd_jobs_track)
    untrack = with_config(jobs_sub.add_parser("untrack", help="forget a UCloud job (nothing is sent to Core)"))
    untrack.add_argument("ucloud_id")
    untrack.set_defaults(func=cmd_jobs_untrack)

    verify = with_config(sub.add_parser("verify", help="show what the next reconciliation pass would send"))
    verify.add_argument("--dry-run", action="store_true", required=True, help="send nothing (required)")
    verify.set_defaults(func=cmd_verify_dry_run)

    products = sub.add_parser("products", help="the products UCloud/Core knows for this provider")
    products_sub = products.add_subparsers(dest="products_command", required=True)
    register = with_config(products_sub.add_parser("register", help="push [[products]] to Core (POST /api/products/v2)"))
    register.add_argument("--dry-run", action="store_true", help="print the request body, send nothing")
    register.set_defaults(func=cmd_products_register)
    plist = with_config(products_sub.add_parser("list", help="what Core has for this provider"))
    plist.add_argument("--json", action="store_true", help="Core's ProductV2 objects, one a line")
    plist.set_defaults(func=cmd_products_list)

    usage = with_config(sub.add_parser("usage", help="per owner and category: the usage reported to Core and its answer"))
    usage.add_argument("--owner", help="only this UCloud username or project id")
    usage.add_argument("--json", action="store_true", help="one JSON object a line")
    usage.set_defaults(func=cmd_usage)

    dev = sub.add_parser("dev-core", help="a local stand-in for UCloud/Core, for development and tests")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    dev_serve = dev_sub.add_parser("serve", help="write keys and a refresh token, then serve Core's API")
    dev_serve.add_argument("--dir", type=Path, default=Path(DEFAULT_CONFIG_DIR), help="where the key files go")
    dev_serve.add_argument("--provider-id", default="slurm")
    dev_serve.add_argument("--host", default="127.0.0.1")
    dev_serve.add_argument("--port", type=int, default=8080)
    dev_serve.add_argument("--record", type=Path, help="append every accepted update request to this file")
    dev_serve.set_defaults(func=cmd_dev_core_serve)
    dev_verify = dev_sub.add_parser("verify", help="send the provider a verify signed as Core signs")
    dev_verify.add_argument("--dir", type=Path, default=Path(DEFAULT_CONFIG_DIR))
    dev_verify.add_argument("--provider-id", default="slurm")
    dev_verify.add_argument("--provider-url", default="http://127.0.0.1:8889")
    dev_verify.add_argument("--body", type=Path, help="send this file's bytes as the body")
    dev_verify.add_argument("jobs", nargs="*", metavar="JOB[:STATE]", help="job ids Core believes active")
    dev_verify.set_defaults(func=cmd_dev_core_verify)
    dev_create = dev_sub.add_parser("create", help="submit a job to the provider as Core does for a user")
    dev_create.add_argument("--dir", type=Path, default=Path(DEFAULT_CONFIG_DIR))
    dev_create.add_argument("--provider-id", default="slurm")
    dev_create.add_argument("--provider-url", default="http://127.0.0.1:8889")
    dev_create.add_argument("--user", default="demo#0001", help="the UCloud user the job belongs to")
    dev_create.add_argument("--product", default="cpu-1/cpu", help="product id/category")
    dev_create.add_argument("--app", default="hello/1.0", help="application name/version")
    dev_create.add_argument("--time", default="0:05:00", help="time allocation H:MM:SS")
    dev_create.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a text parameter")
    dev_create.add_argument("--int-param", action="append", default=[], metavar="NAME=N", help="an integer parameter")
    dev_create.add_argument("--file-param", action="append", default=[], metavar="NAME=UCLOUD_PATH",
                            help="a file parameter (a UCloud path, mapped by [files.paths])")
    dev_create.add_argument("--mount", action="append", default=[], metavar="UCLOUD_PATH",
                            help="a folder to mount (a UCloud path, mapped by [files.paths])")
    dev_create.add_argument("--sample-rate", default="0ms",
                            help="the ucMetricSampleRate Core adds to every job (its default: 0ms = off)")
    dev_create.add_argument("--job-id", help="the UCloud job id (default: a new one)")
    dev_create.set_defaults(func=cmd_dev_core_create)
    dev_follow = dev_sub.add_parser("follow", help="follow a job's output as Core does (prints each frame)")
    dev_follow.add_argument("--dir", type=Path, default=Path(DEFAULT_CONFIG_DIR))
    dev_follow.add_argument("--provider-id", default="slurm")
    dev_follow.add_argument("--provider-url", default="http://127.0.0.1:8889")
    dev_follow.add_argument("--text", action="store_true", help="print the output itself, not the frames")
    dev_follow.add_argument("job", help="the UCloud job id")
    dev_follow.set_defaults(func=cmd_dev_core_follow)
    return parser


# -- serve and check-config ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from provider.daemon import serve

    settings = load_settings(args.config)
    configure_logging(settings.logging.level, settings.logging.format)
    log.info("serve.starting", host=settings.server.host, port=settings.server.port, provider_id=settings.provider.id)
    try:
        asyncio.run(serve(settings, args.config))  # ConfigError and friends: reported by main()
    except OSError as exc:  # the port is taken, or similar
        print(f"error: cannot listen on {settings.server.host}:{settings.server.port}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    problems = check_files(settings)
    source = str(args.config) if args.config else "embedded defaults"
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    configure_logging("warning", "console")
    backend, why = asyncio.run(_choose_backend(settings))  # BackendUnavailable: reported by main()
    print(f"{source}: OK (provider {settings.provider.id}, store {settings.store.path})")
    print(f"slurm backend: {backend} ({why})")
    print(accounting_summary(settings))
    return EXIT_OK


def accounting_summary(settings: Settings) -> str:
    """One line on usage accounting: how often, what ``false`` does, and each category's unit."""
    acc = settings.accounting
    if not acc.enabled:
        return "usage accounting: off"
    from provider.products import accounting_unit

    categories: dict[str, str] = {}
    for p in settings.products:
        unit = accounting_unit(p)["name"]
        categories.setdefault(p.category, f"{p.category} ({unit} per {p.accounting_frequency})")
    listed = ", ".join(categories.values()) or "no products"
    return f"usage accounting: every {acc.interval:g} s, on_exhausted = {acc.on_exhausted}; {listed}"


async def _choose_backend(settings: Settings) -> tuple[str, str]:
    backend, why = await select_backend(settings.slurm)
    await close_backend(backend)
    return backend.name, why


def check_files(settings: Settings) -> list[str]:
    """Problems with the files the settings name: the key, the refresh token, the store's folder."""
    problems: list[str] = []
    try:
        load_public_key(settings.ucloud.public_key_file)
    except PublicKeyError as exc:
        problems.append(f"[ucloud] public_key_file: {exc}")
    try:
        read_refresh_token(settings.ucloud)
    except ConfigError as exc:
        problems.append(str(exc))
    parent = settings.store.path.parent
    if parent.exists() and not parent.is_dir():
        problems.append(f"[store] path: {parent} is not a directory")
    for prefix, root in settings.files.paths.items():  # a typo here would refuse every job using the drive
        if not root.is_dir():
            problems.append(f'[files.paths] "{prefix}": {root} is not a directory on this host')
    return problems


# -- jobs --------------------------------------------------------------------------------------------


def open_store(settings: Settings) -> Store:
    return Store(settings.store.path)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    store = open_store(load_settings(args.config))
    jobs = store.all_jobs()
    if args.json:
        for job in jobs:
            print(json.dumps({**job._asdict(), "state": job.state.value}))
        return EXIT_OK
    rows = [("UCLOUD ID", "SLURM ID", "STATE", "SLURM STATE", "MISSES", "STATUS")]
    rows += [
        (j.ucloud_id, j.slurm_id, j.state.value, j.slurm_state or "-", str(j.miss_count), j.status or "-")
        for j in jobs
    ]
    print_table(rows)
    return EXIT_OK


def cmd_jobs_track(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if not is_valid_slurm_id(args.slurm_id):
        print(f"error: {args.slurm_id!r} is not a Slurm job id (digits, or <array id>_<task>)", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("warning", "console")
    found, problem = asyncio.run(_lookup(settings, args.slurm_id))
    if found is None:
        if not args.force:
            print(f"error: {problem}; use --force to track it anyway", file=sys.stderr)
            return EXIT_FAILED
        name = args.name
    else:
        if args.name is not None and args.name != found:
            print(f"error: Slurm job {args.slurm_id} is named {found!r}, not {args.name!r}", file=sys.stderr)
            return EXIT_FAILED
        name = found
    now = now_ms()
    store = open_store(settings)
    store.track(
        ucloud_id=args.ucloud_id,
        slurm_id=args.slurm_id,
        cluster=settings.slurm.cluster,
        expected_name=name,
        submitted_at=now,
        now=now,
    )
    print(f"tracking UCloud job {args.ucloud_id} as Slurm job {args.slurm_id} (name check: {name!r})")
    return EXIT_OK


async def _lookup(settings: Settings, slurm_id: str) -> tuple[str | None, str]:
    """``(the Slurm job's name, "")``, or ``(None, why it could not be found)``."""
    backend = await open_backend(settings.slurm)
    try:
        live = await backend.live_jobs()
        if live.ok and slurm_id in live.jobs:
            return live.jobs[slurm_id].name, ""
        history = await backend.finished_jobs([slurm_id])
        if history.ok and slurm_id in history.jobs:
            return history.jobs[slurm_id].name, ""
    finally:
        await close_backend(backend)
    if not live.ok or not history.ok:
        return None, f"Slurm could not be asked about job {slurm_id} ({live.error or history.error})"
    return None, f"Slurm does not know job {slurm_id} (neither squeue nor sacct lists it)"


def cmd_jobs_untrack(args: argparse.Namespace) -> int:
    store = open_store(load_settings(args.config))
    if not store.untrack(args.ucloud_id):
        print(f"error: UCloud job {args.ucloud_id} is not tracked", file=sys.stderr)
        return EXIT_FAILED
    print(f"no longer tracking UCloud job {args.ucloud_id}")
    return EXIT_OK


def cmd_verify_dry_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging("warning", "console")
    store = Store(settings.store.path)
    before = {job.ucloud_id: job for job in store.active()}
    report = asyncio.run(_plan(settings, store))
    rows = [("UCLOUD ID", "SLURM ID", "CORE HAS", "SLURM SAYS", "WOULD SEND", "WHY")]
    for d in report.decisions:
        job = before.get(d.ucloud_id)
        update = d.update
        send = "-" if update is None else " ".join(x for x in (update.state.value if update.state else "", update.status or "") if x)
        slurm_state = (d.tracked.slurm_state if d.tracked else None) or "-"
        rows.append((d.ucloud_id, job.slurm_id if job else "-", job.state.value if job else "-", slurm_state, send, d.reason))
    print_table(rows)
    if report.slurm_failed:
        print("note: a Slurm query failed; jobs it could not see are left as they are", file=sys.stderr)
    return EXIT_OK


async def _plan(settings: Settings, store: Store) -> PassReport:
    """What the next pass would decide for every active job; nothing is stored or sent."""
    backend = await open_backend(settings.slurm)
    sync = synchronizer_from_settings(settings, store, backend)
    try:
        return await sync.plan({}, include_active=True)
    finally:
        await close_backend(backend)


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- products and usage ------------------------------------------------------------------------------


async def _with_core(settings: Settings, work: Callable[[CoreClient], Awaitable[T]]) -> T:
    import aiohttp

    from provider.ucloud.core import CoreClient

    token = read_refresh_token(settings.ucloud)
    async with aiohttp.ClientSession() as session:
        return await work(CoreClient(settings.ucloud.url, token, session, timeout=settings.ucloud.timeout))


def cmd_products_register(args: argparse.Namespace) -> int:
    from provider.products import differences_from_core, product_v2
    from provider.ucloud.core import CoreUnavailable

    settings = load_settings(args.config)
    if not settings.products:
        print("error: the config has no [[products]] to register", file=sys.stderr)
        return EXIT_CONFIG
    body = [product_v2(p, settings.provider.id) for p in settings.products]
    if args.dry_run:
        print(json.dumps({"items": body}, indent=2))
        return EXIT_OK
    configure_logging("warning", "console")

    async def register(core: CoreClient) -> tuple[int, str, list[dict[str, object]]]:
        status, why = await core.create_products(body)
        held = await core.browse_products(settings.provider.id) if 200 <= status < 300 else []
        return status, why, held

    try:
        status, why, held = asyncio.run(_with_core(settings, register))
    except CoreUnavailable as exc:
        print(f"error: Core could not be reached: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not 200 <= status < 300:
        print(f"error: Core refused the products ({status}): {why}", file=sys.stderr)
        return EXIT_FAILED
    print(f"registered {len(body)} products with {settings.ucloud.url}")
    problems = differences_from_core(settings.products, held, settings.provider.id)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_products_list(args: argparse.Namespace) -> int:
    from provider.ucloud.core import CoreUnavailable

    settings = load_settings(args.config)
    configure_logging("warning", "console")
    try:
        held = asyncio.run(_with_core(settings, lambda core: core.browse_products(settings.provider.id)))
    except CoreUnavailable as exc:
        print(f"error: Core could not be reached: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        for product in held:
            print(json.dumps(product))
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("PRODUCT", "CATEGORY", "UNIT", "FREQUENCY", "PRICE", "CPU", "MEMORY GB", "GPU", "DESCRIPTION")]
    for p in held:
        category = p.get("category") or {}
        unit = (category.get("accountingUnit") or {}).get("name", "")
        rows.append(
            (
                str(p.get("name")),
                str(category.get("name")),
                str(unit),
                str(category.get("accountingFrequency", "")),
                str(p.get("price")),
                str(p.get("cpu", 0)),
                str(p.get("memoryInGigs", 0)),
                str(p.get("gpu", 0)),
                str(p.get("description", "")),
            )
        )
    print_table(rows)
    return EXIT_OK


def cmd_usage(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    store = open_store(settings)
    totals = store.usage_totals(args.owner)
    if args.json:
        for row in totals:
            print(json.dumps(row))
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("OWNER", "CATEGORY", "JOBS", "TOTAL", "REPORTED", "REPORTED AT", "CORE ANSWERED", "WAITING")]
    for t in totals:
        answer = {"true": "ok", "false": "false (allocation used up)"}.get(t["core_answer"] or "", t["core_answer"] or "-")
        waiting = "-" if t["pending_total"] is None else f"{t['pending_total']} ({t['attempts']} tries)"
        rows.append(
            (
                f"{t['owner_type']}:{t['owner']}",
                t["category"],
                str(t["jobs"]),
                str(t["total"]),
                "-" if t["reported_total"] is None else str(t["reported_total"]),
                _when(t["reported_at"]),
                answer,
                waiting,
            )
        )
    print_table(rows)
    if not totals:
        print("no usage counted yet" + (f" for {args.owner}" if args.owner else ""), file=sys.stderr)
    return EXIT_OK


def _when(ms: int | None) -> str:
    import datetime

    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- dev-core ----------------------------------------------------------------------------------------


def cmd_dev_core_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from provider.ucloud.devcore import DevCore, DevCoreKeys

    configure_logging("info", "console")
    keys = DevCoreKeys.load_or_create(args.dir)
    core = DevCore(keys, args.provider_id, record_file=args.record)
    print(f"dev-core: public key {keys.public_key_file}, refresh token {keys.refresh_token_file}", flush=True)
    web.run_app(core.make_app(), host=args.host, port=args.port, print=None, access_log=None)
    return EXIT_OK


def cmd_dev_core_verify(args: argparse.Namespace) -> int:
    import aiohttp

    from provider.ucloud.devcore import DevCoreKeys, job_body, send_verify

    keys = DevCoreKeys.load_or_create(args.dir)
    if args.body:
        body: bytes | dict[str, object] = args.body.read_bytes()
    else:
        items = []
        for spec in args.jobs:
            job_id, _, state = spec.partition(":")
            items.append(job_body(job_id, state or "RUNNING"))
        body = {"items": items}

    async def send() -> tuple[int, object]:
        async with aiohttp.ClientSession() as session:
            return await send_verify(session, args.provider_url, args.provider_id, keys, body)

    status, answer = asyncio.run(send())
    print(f"{status} {json.dumps(answer)}")
    return EXIT_OK if status == 200 else EXIT_FAILED


def cmd_dev_core_follow(args: argparse.Namespace) -> int:
    import aiohttp

    from provider.ucloud.devcore import DevCoreKeys, follow_job, job_body

    keys = DevCoreKeys.load_or_create(args.dir)

    async def run() -> int:
        status = 0
        async with aiohttp.ClientSession() as session:
            async for frame in follow_job(session, args.provider_url, args.provider_id, keys, job_body(args.job)):
                if frame.get("type") == "response":
                    status = int(frame.get("status", 0))
                if not args.text:
                    print(json.dumps(frame), flush=True)
                elif frame.get("type") == "message":
                    payload = frame["payload"]
                    for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                        if payload.get(stream):
                            out.write(payload[stream])
                            out.flush()
        return status

    status = asyncio.run(run())
    return EXIT_OK if status == 200 else EXIT_FAILED


def cmd_dev_core_create(args: argparse.Namespace) -> int:
    import secrets

    import aiohttp

    from provider.ucloud.devcore import DevCoreKeys, call_provider, job_body

    keys = DevCoreKeys.load_or_create(args.dir)
    product_id, _, category = args.product.partition("/")
    app_name, _, app_version = args.app.partition("/")
    hours, minutes, seconds = (int(x) for x in args.time.split(":"))
    parameters: dict[str, object] = {}
    for item in args.param:
        name, _, value = item.partition("=")
        parameters[name] = {"type": "text", "value": value}
    for item in args.int_param:
        name, _, value = item.partition("=")
        parameters[name] = {"type": "integer", "value": int(value)}
    for item in args.file_param:
        name, _, value = item.partition("=")
        parameters[name] = {"type": "file", "path": value, "readOnly": False}
    mounts = [{"type": "file", "path": path, "readOnly": False} for path in args.mount]
    job_id = args.job_id or str(secrets.randbelow(9 * 10**8) + 10**8)
    job = job_body(
        job_id,
        "IN_QUEUE",
        created_at=now_ms(),
        provider=args.provider_id,
        application=(app_name, app_version or "1.0"),
        product=(product_id, category or product_id),
        parameters=parameters,
        resources=mounts,
        time_allocation=(hours, minutes, seconds),
        owner=args.user,
        sample_rate=args.sample_rate,
    )

    async def send() -> tuple[int, object]:
        async with aiohttp.ClientSession() as session:
            path = f"/ucloud/{args.provider_id}/jobs"
            return await call_provider(session, args.provider_url, path, keys, {"items": [job]}, username=args.user)

    status, answer = asyncio.run(send())
    print(f"job {job_id}: {status} {json.dumps(answer)}")
    return EXIT_OK if status == 200 else EXIT_FAILED
