"""Prometheus metrics (docs/operations.md), through the official client library.

With several workers, each worker process writes its samples to files in a shared folder
(the library's multiprocess mode) and the supervisor sums them when ``/metrics`` is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from corsproxy import __version__

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
            "Upstream failures by route and reason (connect, tls, timeout, protocol).",
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

        self.responses = Counter(
            "corsproxy_responses",
            "Responses by route and the status code sent to the client (499: client hung up).",
            ["route", "code"],
            registry=self.registry,
        )
        # Gauges: with workers, each worker writes its own value and /metrics shows the sum
        # over the live ones (a dead worker's connections are gone with it).
        self.websocket_sessions = Gauge(
            "corsproxy_websocket_sessions",
            "Open WebSocket tunnels.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "corsproxy_requests_in_flight",
            "Requests being answered now (a WebSocket session, until it ends).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.client_connections = Gauge(
            "corsproxy_client_connections",
            "Open client connections (one handed to a WebSocket tunnel counts as a session).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

        # Labelled children, looked up once: ``labels()`` takes a lock and builds a key.
        self.counted: dict[tuple[str, str, str], Any] = {}
        self.timed: dict[str, Any] = {}
        self.coded: dict[tuple[str, int], Any] = {}

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

    def respond(self, route: str, status: int) -> None:
        """Count a response by the status the client got."""
        key = (route, status)
        counter = self.coded.get(key)
        if counter is None:
            counter = self.coded[key] = self.responses.labels(route, str(status))
        counter.inc()


RELOAD_RESULTS = ("success", "failure", "unchanged")


class ReloadMetrics:
    """What the process that reads the config file exports (the supervisor, with workers):
    reloads, the state of the last one, the build, and the process_* series.

    ``processes`` lists (pid, role) of the processes whose process_* series to export, each
    with those two labels; without it, this process's own series, unlabelled."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        processes: Callable[[], Iterable[tuple[int, str]]] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reloads = Counter(
            "corsproxy_config_reloads",
            "Config reloads by result (success, failure, unchanged).",
            ["result"],
            registry=self.registry,
        )
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)  # every series exists from the start, at 0
        self.last_successful = Gauge(
            "corsproxy_config_last_reload_successful",
            "1 if the last reload attempt left the file's settings in force, else 0.",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "corsproxy_config_last_reload_success_timestamp_seconds",
            "When settings were last loaded from the config (start-up or reload), Unix time.",
            registry=self.registry,
        )
        self.build_info = Gauge(
            "corsproxy_build_info",
            "Always 1; the version in a label.",
            ["version"],
            registry=self.registry,
        )
        self.build_info.labels(__version__).set(1)
        self.last_successful.set(1)  # the settings loaded at start-up are in force
        self.last_success.set_to_current_time()
        if processes is None:
            ProcessCollector(registry=self.registry)
        else:
            self.registry.register(ProcessesCollector(processes))

    def counted(self, result: str) -> None:
        """Count one reload attempt: ``success``, ``failure`` or ``unchanged``."""
        self.reloads.labels(result).inc()
        self.last_successful.set(0 if result == "failure" else 1)
        if result == "success":
            self.last_success.set_to_current_time()


class ProcessesCollector(Collector):
    """The process_* series of several processes (read from /proc), each labelled with its
    ``pid`` and ``role``: with workers, the supervisor and every live worker."""

    def __init__(self, processes: Callable[[], Iterable[tuple[int, str]]]) -> None:
        self.processes = processes

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid, role in self.processes():
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in collector.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    labels = {**sample.labels, "pid": str(pid), "role": role}
                    merged.add_sample(sample.name, labels, sample.value)
        return list(families.values())


def exposition(*registries: CollectorRegistry) -> bytes:
    return b"".join(generate_latest(registry) for registry in registries)


def multiprocess_registry(folder: str) -> CollectorRegistry:
    """A registry that sums what every worker wrote into ``folder``."""
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=folder)
    return registry
