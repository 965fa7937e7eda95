"""Prometheus metrics of the gateway: requests by route and status, invoke latency.

Each app owns its registry (several apps may live in one process, e.g. in tests). Under
gunicorn the workers count in prometheus_client's multiprocess files (``multiprocess_dir``,
from ``Settings.gateway_metrics_dir``, which the gunicorn master sets): ``/metrics`` from any
worker sums every worker, past ones included (a counter never goes back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            use_multiprocess_values()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "faas_gateway_requests_total", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.request_latency = Histogram(
            "faas_gateway_request_seconds", "Time to the response's headers, by route.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.invoke_latency = Histogram(
            "faas_gateway_invoke_seconds", "Invoke latency (queueing plus any blocking wait), by face and mode.",
            ["face", "mode", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.invocations = Counter(
            "faas_gateway_invocations_total", "Invocations queued, by face and mode.", ["face", "mode"],
            registry=self.registry,
        )

        # the labelled children, looked up once per label set (labels() takes a lock and builds a key;
        # the label sets are few: routes are URL rules, outcomes are statuses)
        self._invoke_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_invoke(self, face: str, mode: str, outcome: str, seconds: float) -> None:
        key = (face, mode, outcome)
        children = self._invoke_children.get(key)
        if children is None:
            children = (self.invocations.labels(face, mode), self.invoke_latency.labels(face, mode, outcome))
            self._invoke_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered (``route``: the URL rule)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.request_latency.labels(route, method))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every worker's metrics, and its content type."""
        registry = self.registry
        if self.multiprocess_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry), CONTENT_TYPE_LATEST


def use_multiprocess_values() -> None:
    """prometheus_client picks file-backed values at import when PROMETHEUS_MULTIPROC_DIR is set (the
    gunicorn master sets it before any worker imports it); if it was imported before that, switch
    now, before this process creates a metric."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


def mark_worker_dead(multiprocess_dir: Path, pid: int) -> None:
    """gunicorn's ``child_exit``: drop a dead worker's live gauges (its counts stay in the totals)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(multiprocess_dir))
