"""The gateway's Flask app factory (no app exists at import time)."""

from __future__ import annotations

import logging
import secrets

from flask import Flask, Response, g

from faas_llm.settings import Settings, get_settings
from gateway.context import EXTENSION, Gateway
from gateway.errors import register_error_handlers
from gateway.fastpath import FastPath
from gateway.routes import actions, activations, openai, ops

REQUEST_ID_HEADER = "X-Request-ID"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the gateway for ``settings`` (default: :func:`get_settings`)."""
    settings = settings or get_settings()
    app = Flask("gateway")
    # Werkzeug then stops reading a body one byte past the limit (a chunked body has no
    # Content-Length to check); reading that extra byte is how json_body() tells it is too large.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    gw = Gateway.build(settings)
    app.extensions[EXTENSION] = gw
    logging.getLogger("gateway").setLevel(settings.log_level)

    @app.before_request
    def _transaction() -> None:
        g.tid = secrets.token_hex(16)

    @app.after_request
    def _tag(response: Response) -> Response:
        response.headers.setdefault(REQUEST_ID_HEADER, str(getattr(g, "tid", "")))
        return response

    gw.metrics.install(app)
    register_error_handlers(app)
    for blueprint in (ops.bp, actions.bp, activations.bp, openai.bp):
        app.register_blueprint(blueprint)
    if settings.gateway_fast_path:
        app.wsgi_app = FastPath(app, app.wsgi_app)  # type: ignore[method-assign]
    return app
