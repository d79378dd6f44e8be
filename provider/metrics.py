"""Prometheus metrics for operators (``GET /metrics``), one registry per application.

Counters that already live on the objects doing the work (the backend's call counts, the sender's
sent and rejected updates, the client's token refreshes) are read at scrape time, so there is one
source of truth; latencies and HTTP requests are observed as they happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "ucloud_provider"


@dataclass(frozen=True)
class Snapshot:
    """What the scrape-time collector reads from the running daemon."""

    slurm_calls: dict[str, int]
    slurm_failures: dict[str, int]
    jobs_by_state: dict[str, int]
    outbox_depth: int
    outbox_oldest_age_seconds: float
    updates_sent: int
    updates_rejected: int
    update_failures: int
    token_refreshes: int
    passes: int
    usage: UsageSnapshot | None = None  # None: accounting is off


@dataclass(frozen=True)
class UsageSnapshot:
    """Usage accounting's numbers: what was reported, what waits, what Core refused or answered false."""

    reported_by_category: dict[str, int]  # the sum of the totals Core accepted, in the category's units
    pending: int
    pending_oldest_age_seconds: float
    open_jobs: int
    exhausted_owners: int
    reports_sent: int
    reports_refused: int
    exhausted_answers: int
    request_failures: int
    passes: int
    pass_failures: int


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:
            return
        calls = CounterMetricFamily(f"{PREFIX}_slurm_queries", "Slurm queries run, by command", labels=["command"])
        for command, count in sorted(snap.slurm_calls.items()):
            calls.add_metric([command], count)
        yield calls
        failures = CounterMetricFamily(
            f"{PREFIX}_slurm_query_failures", "Slurm queries that failed or timed out, by command", labels=["command"]
        )
        for command, count in sorted(snap.slurm_failures.items()):
            failures.add_metric([command], count)
        yield failures
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs_tracked", "Jobs in the job map, by UCloud state", labels=["state"])
        for state, count in sorted(snap.jobs_by_state.items()):
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(f"{PREFIX}_outbox_depth", "Updates waiting to be sent to Core", value=snap.outbox_depth)
        yield GaugeMetricFamily(
            f"{PREFIX}_outbox_oldest_age_seconds",
            "Age of the oldest update waiting for Core (0 when none waits)",
            value=snap.outbox_oldest_age_seconds,
        )
        yield CounterMetricFamily(f"{PREFIX}_updates_sent", "Updates Core accepted", value=snap.updates_sent)
        yield CounterMetricFamily(
            f"{PREFIX}_updates_rejected", "Updates Core refused for a job it does not know (404)", value=snap.updates_rejected
        )
        yield CounterMetricFamily(
            f"{PREFIX}_update_request_failures", "Update requests that failed and will be retried", value=snap.update_failures
        )
        yield CounterMetricFamily(f"{PREFIX}_token_refreshes", "Access tokens fetched from Core", value=snap.token_refreshes)
        yield CounterMetricFamily(f"{PREFIX}_reconcile_passes", "Reconciliation passes run", value=snap.passes)
        if snap.usage is not None:
            yield from _usage_metrics(snap.usage)


def _usage_metrics(usage: UsageSnapshot) -> Iterator[Metric]:
    reported = GaugeMetricFamily(
        f"{PREFIX}_usage_reported_units",
        "Sum over owners of the absolute usage Core accepted, in the category's units",
        labels=["category"],
    )
    for category, units in sorted(usage.reported_by_category.items()):
        reported.add_metric([category], units)
    yield reported
    yield GaugeMetricFamily(f"{PREFIX}_usage_pending", "Usage totals waiting to be sent to Core", value=usage.pending)
    yield GaugeMetricFamily(
        f"{PREFIX}_usage_pending_oldest_age_seconds",
        "Age of the oldest usage total waiting for Core (0 when none waits)",
        value=usage.pending_oldest_age_seconds,
    )
    yield GaugeMetricFamily(f"{PREFIX}_usage_open_jobs", "Jobs whose usage may still grow", value=usage.open_jobs)
    yield GaugeMetricFamily(
        f"{PREFIX}_usage_exhausted_owners",
        "(owner, category) pairs whose allocation Core last said is used up (reportUsage answered false)",
        value=usage.exhausted_owners,
    )
    yield CounterMetricFamily(f"{PREFIX}_usage_reports_sent", "Usage totals Core accepted", value=usage.reports_sent)
    yield CounterMetricFamily(
        f"{PREFIX}_usage_reports_refused", "Usage totals Core refused (unknown owner or category)", value=usage.reports_refused
    )
    yield CounterMetricFamily(
        f"{PREFIX}_usage_exhausted_answers", "reportUsage answers of false (allocation used up)", value=usage.exhausted_answers
    )
    yield CounterMetricFamily(
        f"{PREFIX}_usage_request_failures", "reportUsage requests that failed and will be retried", value=usage.request_failures
    )
    yield CounterMetricFamily(f"{PREFIX}_usage_passes", "Accounting passes run", value=usage.passes)
    yield CounterMetricFamily(
        f"{PREFIX}_usage_pass_failures", "Accounting passes whose sacct failed (nothing changed)", value=usage.pass_failures
    )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.slurm_seconds = Histogram(
            f"{PREFIX}_slurm_query_seconds",
            "Wall time of Slurm queries, by command",
            ["command"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self._snapshot: Callable[[], Snapshot | None] = lambda: None
        self.registry.register(_SnapshotCollector(lambda: self._snapshot()))

    def observe_slurm(self, command: str, seconds: float) -> None:
        self.slurm_seconds.labels(command).observe(seconds)

    def read_from(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot

    def render(self) -> bytes:
        return generate_latest(self.registry)
