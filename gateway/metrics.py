"""Prometheus metrics of the gateway: requests by route and status, invoke latency.

Each app owns its registry (several apps may live in one process, e.g. in tests). Under
gunicorn each worker process counts its own requests; scrape the workers you run, or run
one worker with many threads when one exact total matters.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
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

    def observe_invoke(self, face: str, mode: str, outcome: str, seconds: float) -> None:
        self.invocations.labels(face, mode).inc()
        self.invoke_latency.labels(face, mode, outcome).observe(seconds)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)

    def install(self, app: Flask) -> None:
        @app.before_request
        def _start_timer() -> None:
            g.started = time.perf_counter()

        @app.after_request
        def _count(response: Response) -> Response:
            route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
            self.requests.labels(route, request.method, str(response.status_code)).inc()
            started = getattr(g, "started", None)
            if started is not None:
                self.request_latency.labels(route, request.method).observe(time.perf_counter() - started)
            return response
