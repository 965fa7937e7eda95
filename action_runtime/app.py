"""The runtime as a WSGI (Flask) app: the same routes as the runtime's own server, for in-process use.

The runtime process serves :mod:`action_runtime.routes` with its lean HTTP/1.1 server
(:mod:`action_runtime.httpserver`); this app puts the same route table behind Flask, for tests
that drive a runtime in-process (``create_app(...).test_client()``) and for any WSGI server.
:func:`build_service` is what both share: prewarm, the service, its Knative self-initialisation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask, Response, request

from action_runtime.loading import ModelSource
from action_runtime.prewarm import prewarm
from action_runtime.routes import HttpReply, RuntimeRoutes, too_large_reply
from action_runtime.service import RuntimeService
from faas_llm.settings import Settings

SERVICE_KEY = "faas_llm_runtime"


def build_service(
    settings: Settings, sources: list[ModelSource] | None = None, *, do_prewarm: bool = True,
) -> RuntimeService:
    """The runtime's service. ``do_prewarm`` imports torch and transformers now (what a prewarmed
    runtime is); with ``settings.runtime_model`` the model starts loading in the background (Knative)."""
    prewarm_s = prewarm(settings) if do_prewarm else 0.0
    service = RuntimeService(settings, sources, prewarm_s=prewarm_s)
    if settings.runtime_model:
        threading.Thread(target=service.init_from_settings, name="runtime-model-init", daemon=True).start()
    return service


def _response(reply: HttpReply) -> Response:
    response = Response(reply.body, status=reply.status, mimetype=reply.content_type)
    for name, value in reply.headers:
        response.headers[name] = value
    return response


def create_app(
    settings: Settings, sources: list[ModelSource] | None = None, *, do_prewarm: bool = True,
) -> Flask:
    """The runtime app (see :func:`build_service` for ``do_prewarm``)."""
    routes = RuntimeRoutes(build_service(settings, sources, do_prewarm=do_prewarm))
    app = Flask("action_runtime")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    app.extensions[SERVICE_KEY] = routes.service

    @app.errorhandler(413)
    def _too_large(_exc: Exception) -> Response:
        return _response(too_large_reply())

    def view(path: str, method: str) -> Callable[[], Response]:
        def handle() -> Response:
            return _response(routes.handle(method, path, request.get_data()))
        return handle

    for path, methods in routes.table.items():
        for method in methods:
            app.add_url_rule(path, f"{method} {path}", view(path, method), methods=[method])
    return app


def service_of(app: Flask) -> RuntimeService:
    service: RuntimeService = app.extensions[SERVICE_KEY]
    return service
