"""The Flask app of the action runtime: thin routes over :class:`~action_runtime.service.RuntimeService`.

Routes (OpenWhisk action protocol, Knative runtime contract, migration control):

- ``POST /init``  ``{value: {name, main, code, binary, env, model, checkpoint}}``, once (403 after)
- ``POST /run``   ``{value, namespace, action_name, action_version, activation_id, transaction_id,
  deadline}``: a JSON result, or with ``value.stream`` true an NDJSON stream of events
- ``POST /``      Knative's single entry point: ``{init?, value, ...}`` like /run (initialising first
  when ``init`` is given), or a bare parameters object
- ``GET /ready``  200 once initialised, 503 before (the readiness probe); ``GET /health`` always 200
- ``POST /export`` and ``POST /prefill``: migration (see :mod:`action_runtime.protocol`)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request

from action_runtime.loading import ModelSource
from action_runtime.prewarm import prewarm
from action_runtime.responses import error_body
from action_runtime.service import Reply, RuntimeService, Stream
from faas_llm.errors import FaasLLMError, ForbiddenError, RequestError
from faas_llm.settings import Settings

log = logging.getLogger(__name__)
SERVICE_KEY = "faas_llm_runtime"


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


def _ndjson(events: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for event in events:
        yield json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _body() -> Any:
    data = request.get_json(silent=True, force=True)
    if not isinstance(data, dict):
        raise RequestError("The request content was malformed: send a JSON object.")
    return data


def _reply(outcome: Reply | Stream) -> Response:
    if isinstance(outcome, Stream):
        return Response(_ndjson(outcome.events), mimetype="application/x-ndjson",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return _json(outcome.body, outcome.status)


def create_app(
    settings: Settings, sources: list[ModelSource] | None = None, *, do_prewarm: bool = True,
) -> Flask:
    """The runtime app. ``do_prewarm`` imports torch and transformers now (what a prewarmed runtime is)."""
    prewarm_s = prewarm(settings) if do_prewarm else 0.0
    service = RuntimeService(settings, sources, prewarm_s=prewarm_s)
    app = Flask("action_runtime")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    app.extensions[SERVICE_KEY] = service

    @app.errorhandler(FaasLLMError)
    def _faas_error(exc: FaasLLMError) -> Response:
        return _json(error_body(exc), exc.http_status)

    @app.errorhandler(413)
    def _too_large(_exc: Exception) -> Response:
        return _json({"error": "The request content was too large.", "http_status": 413}, 413)

    @app.post("/init")
    def init() -> Response:
        return _json(service.init(_body()))

    @app.post("/run")
    def run() -> Response:
        return _reply(service.run(request.get_json(silent=True, force=True)))

    @app.post("/")
    def single_entrypoint() -> Response:
        body = _body()
        if "value" not in body:
            body = {"value": body}
        if "init" in body and not service.ready:
            try:
                service.init({"value": body.pop("init")})
            except ForbiddenError:
                pass  # a concurrent request initialised it first
        return _reply(service.run(body))

    @app.get("/ready")
    def ready() -> Response:
        if service.ready:
            return _json({"ready": True})
        return _json({"ready": False, **service.health()}, 503)

    @app.get("/health")
    def health() -> Response:
        return _json(service.health())

    @app.post("/export")
    def export() -> Response:
        return _json(service.export(_body()))

    @app.post("/prefill")
    def prefill() -> Response:
        return _json(service.prefill(_body()))

    if settings.runtime_model:
        threading.Thread(target=service.init_from_settings, name="runtime-model-init", daemon=True).start()
    return app


def service_of(app: Flask) -> RuntimeService:
    service: RuntimeService = app.extensions[SERVICE_KEY]
    return service
