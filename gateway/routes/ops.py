"""Unauthenticated operations routes: ``/health``, ``/metrics`` and the API's root."""

from __future__ import annotations

import redis
from flask import Blueprint, Response

from faas_llm import __version__
from gateway.context import gateway
from gateway.routes.common import json_response

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health() -> Response:
    try:
        gateway().redis.ping()
    except redis.RedisError as exc:
        return json_response({"status": "unavailable", "redis": False, "detail": str(exc)}, 503)
    return json_response({"status": "ok", "redis": True})


@bp.get("/metrics")
def metrics() -> Response:
    return gateway().metrics.exposition()


@bp.get("/api/v1")
def api_info() -> Response:
    return json_response({"description": "faas-llm: OpenWhisk REST API and OpenAI-compatible API for LLM actions",
                          "api_paths": ["/api/v1", "/v1"], "build": __version__})
