"""Prometheus metrics in a registry of their own (nothing global), served at ``/metrics``.

``storage_requests_total{operation}`` is read from the store's own request counter at scrape time,
and ``storage_transactions_total{class}`` sums it by B2 transaction class (``a``, ``b``, ``c``;
:mod:`watcher.b2classes`): they let an operator see the B2 transaction bill coming.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from watcher.b2classes import by_class


class _StorageRequests:
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "b2zip_storage_requests", "S3 requests sent, retries included", labels=["operation"]
        )
        counts = self._counts()
        for operation, count in sorted(counts.items()):
            family.add_metric([operation], count)
        yield family
        classes = CounterMetricFamily(
            "b2zip_storage_transactions",
            "S3 requests sent, retries included, by B2 transaction class (a: uploads and deletes, "
            "b: downloads and HEADs, c: lists, copies and the rest)",
            labels=["class"],
        )
        for name, count in by_class(counts).items():
            classes.add_metric([name], count)
        yield classes


class Metrics:
    def __init__(self, request_counts: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_started = Counter("b2zip_jobs_started", "Jobs started", registry=r)
        self.jobs_finished = Counter(
            "b2zip_jobs_finished",
            "Jobs finished, by outcome and error code",
            ["outcome", "code"],
            registry=r,
        )
        self.bytes_read = Counter("b2zip_bytes_read", "Input bytes read", registry=r)
        self.bytes_written = Counter("b2zip_bytes_written", "ZIP bytes uploaded", registry=r)
        self.job_duration = Histogram(
            "b2zip_job_duration_seconds",
            "Job wall time",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf")),
            registry=r,
        )
        self.jobs_running = Gauge("b2zip_jobs_running", "Jobs running now", registry=r)
        self.retention_deleted = Counter(
            "b2zip_retention_deleted",
            "Object versions deleted (uploads aborted) by retention, by kind",
            ["kind"],
            registry=r,
        )
        self.manifests_pending = Gauge(
            "b2zip_manifests_pending", "Manifests waiting in the requests prefix", registry=r
        )
        if request_counts is not None:
            r.register(_StorageRequests(request_counts))

    def job_started(self) -> None:
        self.jobs_started.inc()
        self.jobs_running.inc()

    def observe_outcome(self, outcome: Any) -> None:
        """Count one finished job (a ``job.Outcome``)."""
        self.jobs_running.dec()
        code = "" if outcome.error is None else outcome.error.code
        self.jobs_finished.labels(outcome=outcome.state, code=code).inc()
        result = outcome.result or {}
        self.bytes_read.inc(result.get("bytes_read") or 0)
        self.bytes_written.inc(result.get("bytes_written") or 0)
        if result.get("duration_seconds") is not None:
            self.job_duration.observe(result["duration_seconds"])

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
