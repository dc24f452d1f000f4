"""Prometheus metrics (SPEC 6), through the official client library.

With several workers, each worker process writes its samples to files in a shared folder
(the library's multiprocess mode) and the supervisor sums them when ``/metrics`` is read.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

# The classic text format, which ``generate_latest`` writes by default. The library's own
# CONTENT_TYPE_LATEST says version=1.0.0 since 0.22; it sends that only to a scraper that asks.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # *_created series: noise for counters that start with the process
# Most answers are local (preflights, refusals) or one upstream round trip away.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RequestMetrics:
    """What each process serving requests counts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "corsproxy_requests",
            "Requests by route, CORS kind and decision.",
            ["route", "kind", "decision"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "corsproxy_upstream_errors",
            "Upstream failures by route and reason (connect, timeout, protocol).",
            ["route", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "corsproxy_request_duration_seconds",
            "Time from request head to the last byte of the response, by route.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

        self.websocket_sessions = Gauge(
            "corsproxy_websocket_sessions",
            "Open WebSocket tunnels.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

        # Labelled children, looked up once: ``labels()`` takes a lock and builds a key.
        self.counted: dict[tuple[str, str, str], Any] = {}
        self.timed: dict[str, Any] = {}

    def observe(
        self, route: str, kind: str, decision: str, upstream_error: str | None, seconds: float
    ) -> None:
        key = (route, kind, decision)
        counter = self.counted.get(key)
        if counter is None:
            counter = self.counted[key] = self.requests.labels(route, kind, decision)
        counter.inc()
        if upstream_error:
            self.upstream_errors.labels(route, upstream_error).inc()
        histogram = self.timed.get(route)
        if histogram is None:
            histogram = self.timed[route] = self.duration.labels(route)
        histogram.observe(seconds)


class ReloadMetrics:
    """Counted once per reload by the process that reads the file."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reloads = Counter(
            "corsproxy_config_reloads",
            "Config reloads by result (success, failure).",
            ["result"],
            registry=self.registry,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)  # both series exist from the start, at 0


def exposition(*registries: CollectorRegistry) -> bytes:
    return b"".join(generate_latest(registry) for registry in registries)


def multiprocess_registry(folder: str) -> CollectorRegistry:
    """A registry that sums what every worker wrote into ``folder``."""
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=folder)
    return registry
