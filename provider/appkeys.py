"""Typed keys for what the aiohttp application holds (``app[STORE]`` instead of string keys)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from provider.config import LiveSettings
from provider.follow import FollowHub
from provider.jobs import JobService
from provider.metrics import Metrics
from provider.outbox import OutboxSender
from provider.slurm.backend import SlurmBackend
from provider.store import Store
from provider.sweeper import Sweeper
from provider.sync import Synchronizer
from provider.ucloud.auth import TokenVerifier
from provider.ucloud.core import CoreClient
from provider.usage import UsageMeter, UsageSender

SETTINGS = web.AppKey("settings", LiveSettings)
STORE = web.AppKey("store", Store)
BACKEND = web.AppKey("backend", SlurmBackend)
SYNC = web.AppKey("sync", Synchronizer)
SWEEPER = web.AppKey("sweeper", Sweeper)
SENDER = web.AppKey("sender", OutboxSender)
CORE = web.AppKey("core", CoreClient)
VERIFIER = web.AppKey("verifier", TokenVerifier)
JOBS = web.AppKey("jobs", JobService)
METRICS = web.AppKey("metrics", Metrics)
USAGE_METER = web.AppKey("usage_meter", UsageMeter)
USAGE_SENDER = web.AppKey("usage_sender", UsageSender)
CLOCK: web.AppKey[Callable[[], int]] = web.AppKey("clock")  # milliseconds since the epoch (tests move it)
BACKEND_GIVEN: web.AppKey[SlurmBackend | None] = web.AppKey("backend_given")  # a test's backend, else None
FOLLOW = web.AppKey("follow", FollowHub)
TASKS = web.AppKey("tasks", list[asyncio.Task[None]])  # the background loops, for the watchdog
CLAIMS = web.RequestKey("claims", dict[str, Any])
