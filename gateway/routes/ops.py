"""Unauthenticated operations routes: ``/health``, ``/metrics`` and the API's root."""

from __future__ import annotations

import redis

from faas_llm import __version__
from gateway.calls import Call, RouteReply, json_reply
from gateway.errors import RETRY_AFTER_S


def health(call: Call) -> RouteReply:
    try:
        call.gw.redis.ping()
    except redis.RedisError as exc:
        down = json_reply({"status": "unavailable", "redis": False, "detail": str(exc)}, 503)
        return RouteReply(down.status, down.body, headers=(("Retry-After", str(RETRY_AFTER_S)),))
    return json_reply({"status": "ok", "redis": True})


def metrics(call: Call) -> RouteReply:
    body, content_type = call.gw.metrics.exposition()
    return RouteReply(200, body, content_type)


def api_info(call: Call) -> RouteReply:
    return json_reply({"description": "faas-llm: OpenWhisk REST API and OpenAI-compatible API for LLM actions",
                       "api_paths": ["/api/v1", "/v1"], "build": __version__})
