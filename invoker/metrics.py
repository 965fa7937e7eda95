"""Prometheus metrics of an invoker (own registry; served on ``settings.invoker_metrics_port`` when > 0)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class InvokerMetrics:
    def __init__(self, node: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"node": node}
        self.starts = Counter(
            "faas_llm_invoker_container_starts", "Containers initialised with an action, by kind and load tier",
            ["kind", "tier"], registry=self.registry,
        )
        self.activations = Counter(
            "faas_llm_invoker_activations", "Activations completed here, by start (cold/warm) and status",
            ["start", "tier", "status"], registry=self.registry,
        )
        self.queue_depth = Gauge(
            "faas_llm_invoker_queue_depth", "Undelivered invocations per action queue", ["queue"],
            registry=self.registry,
        )
        self.containers = Gauge(
            "faas_llm_invoker_containers", "Containers of this node by state", ["state"], registry=self.registry,
        )
        self.reclaimed = Counter(
            "faas_llm_invoker_reclaimed", "Invocations reclaimed from dead consumers, by what became of them",
            ["outcome"], registry=self.registry,
        )
        self.run_seconds = Histogram(
            "faas_llm_invoker_run_seconds", "Duration of runs on this node", registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.node = labels

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose the metrics on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
