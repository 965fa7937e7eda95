"""The gateway's Flask app factory (no app exists at import time): every route of the table, as Flask views.

Each view builds the request's :class:`~gateway.calls.Call` and runs the route's handler
(:func:`gateway.routes.serve`); the thin WSGI layer that answers the hot routes without Flask
(:class:`gateway.fastpath.FastPath`) wraps ``app.wsgi_app``, as middleware does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from faas_llm.settings import Settings, get_settings
from gateway.calls import REQUEST_ID_HEADER, Call, RouteReply
from gateway.context import EXTENSION, Gateway
from gateway.errors import error_reply, exception_reply, http_exception_error, payload_too_large
from gateway.fastpath import FastPath
from gateway.routes import ROUTES, Route, serve

#: after refusing a body as too large, read and drop up to this much of it so the 413 reaches a
#: client that sends its whole body before reading (closing on unread data resets the connection)
DRAIN_MAX_BYTES = 16 * 1024 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    """Build the gateway for ``settings`` (default: :func:`get_settings`)."""
    settings = settings or get_settings()
    app = Flask("gateway")
    # Werkzeug then stops reading a body one byte past the limit (a chunked body has no
    # Content-Length to check); reading that extra byte is how read_body() tells it is too large.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes + 1
    gw = Gateway.build(settings)
    app.extensions[EXTENSION] = gw
    logging.getLogger("gateway").setLevel(settings.log_level)
    app.before_request(_begin)
    app.after_request(_finish)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_exception)
    for route in ROUTES:
        app.add_url_rule(route.rule, route.endpoint, _view(route), methods=[route.method])
    if settings.gateway_fast_path:
        app.wsgi_app = FastPath(gw, app.wsgi_app)  # type: ignore[method-assign]
    return app


def _view(route: Route) -> Callable[..., Response]:
    def view(**path_args: str) -> Response:
        return flask_response(serve(route, current_call(), path_args))

    return view


def flask_response(reply: RouteReply) -> Response:
    return Response(reply.body, status=reply.status, headers=list(reply.headers), content_type=reply.content_type)


def gateway() -> Gateway:
    """The services of the app handling the current request."""
    gw: Gateway = current_app.extensions[EXTENSION]
    return gw


def current_call() -> Call:
    """The Call of the request Flask is handling (made before anything else runs)."""
    call: Call | None = g.get("call")
    if call is None:
        call = g.call = Call(gateway(), request.method, request.path, request.args, read_body,
                             request.headers.get("Authorization") or "")
    return call


def _begin() -> None:
    current_call()


def _finish(response: Response) -> Response:
    call = current_call()
    response.headers.setdefault(REQUEST_ID_HEADER, call.tid)
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    call.gw.metrics.observe_request(route, request.method, response.status_code, time.perf_counter() - call.started)
    return response


def read_body() -> bytes:
    """The request's body, size-checked from ``Content-Length`` before anything is read and again while
    reading (a chunked body has no length): 413 either way."""
    limit = gateway().settings.max_payload_bytes
    if request.content_length is not None and request.content_length > limit:
        discard_body(request.content_length)
        raise payload_too_large(request.content_length, limit)
    data = request.get_data(cache=True)  # the stream stops at MAX_CONTENT_LENGTH = limit + 1
    if len(data) > limit:
        raise payload_too_large(None, limit)
    return data


def discard_body(content_length: int) -> None:
    """Read and drop a refused body (bounded by its length and DRAIN_MAX_BYTES; nothing is kept)."""
    if content_length > DRAIN_MAX_BYTES:
        return
    stream: Any = request.environ.get("wsgi.input")
    remaining = content_length
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        remaining -= len(chunk)


def _handle_http(exc: HTTPException) -> Response:
    error, status = http_exception_error(exc, current_call(), request.content_length,
                                         current_app.config["MAX_CONTENT_LENGTH"])
    return flask_response(error_reply(error, current_call(), status))


def _handle_exception(exc: Exception) -> Response:
    return flask_response(exception_reply(exc, current_call()))
