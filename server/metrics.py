"""Prometheus metrics for one node, rendered at ``GET /metrics``.

Each node has its own registry (tests run several nodes in one process).
Counters that the hot path touches are plain prometheus-client metrics;
values owned by an actor are read from its ``statistics()`` at scrape time
instead of being pushed on every change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from actors.supervisor import SupervisorStatistics

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _SupervisorCollector(Collector):
    def __init__(self, source: Callable[[], SupervisorStatistics | None]) -> None:
        self._source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._source()
        restarts = CounterMetricFamily(
            "podium_actor_restarts", "Restarts of each supervised actor.", labels=["actor"]
        )
        running = GaugeMetricFamily(
            "podium_actor_up", "1 if the actor is running, else 0.", labels=["actor"]
        )
        for child in stats.children if stats else ():
            restarts.add_metric([child.name], child.restarts)
            running.add_metric([child.name], 1.0 if child.state.value == "running" else 0.0)
        yield restarts
        yield running


class _StatisticsCollector(Collector):
    """Counters and gauges read from actors' ``statistics()`` at scrape time."""

    def __init__(self) -> None:
        self._sources: list[tuple[str, str, str, Callable[[], float]]] = []

    def add(self, kind: str, name: str, doc: str, read: Callable[[], float]) -> None:
        self._sources.append((kind, name, doc, read))

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for kind, name, doc, read in self._sources:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, doc, value=read())


class NodeMetrics:
    """The metrics of one node."""

    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        info = Info("podium", "Podium node identity.", registry=self.registry)
        try:
            version = metadata.version("podium")
        except metadata.PackageNotFoundError:
            version = "unknown"
        info.info({"node_id": node_id, "version": version})
        self.ws_connections = Gauge(
            "podium_ws_connections", "Open WebSocket connections.", registry=self.registry
        )
        self.ws_connections_total = Counter(
            "podium_ws_accepted", "WebSocket connections accepted.", registry=self.registry
        )
        self.ws_rejected_total = Counter(
            "podium_ws_rejected",
            "WebSocket handshakes refused, by reason.",
            labelnames=["reason"],
            registry=self.registry,
        )
        self.ws_failures_total = Counter(
            "podium_ws_connection_failures",
            "Connection actors that failed and were closed with 1011.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "podium_ready", "1 if the last readiness check passed.", registry=self.registry
        )
        self.submissions_total = Counter(
            "podium_score_submissions",
            "Score submissions answered, by outcome (ok or the error code).",
            labelnames=["outcome"],
            registry=self.registry,
        )
        self._statistics = _StatisticsCollector()
        self.registry.register(self._statistics)

    def counter_from(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Export a counter an actor keeps, read at scrape time."""
        self._statistics.add("counter", name, doc, read)

    def gauge_from(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Export a gauge an actor keeps, read at scrape time."""
        self._statistics.add("gauge", name, doc, read)

    def watch_supervisor(self, source: Callable[[], SupervisorStatistics | None]) -> None:
        """Export the supervisor's per-actor figures, read at scrape time."""
        self.registry.register(_SupervisorCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
