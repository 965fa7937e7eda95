"""The hot routes without Flask's per-request machinery: a thin WSGI layer under the route table.

A blocking invoke is the gateway's hot path; under Flask about a fifth of its CPU was request and
response objects, URL matching and the before/after hooks. :class:`FastPath` wraps the Flask app's
``wsgi_app`` (as middleware does) and answers the routes the table marks ``hot`` (OpenWhisk invoke,
``/v1/completions``, ``/v1/chat/completions``) itself: it matches them with the table's own rules, builds
the request's :class:`~gateway.calls.Call` and runs the same :func:`~gateway.routes.serve` (so the same
authentication and handler) and, for an error, the same :func:`~gateway.errors.exception_reply`. It
implements no route. A request it cannot read as plainly as Flask would goes to Flask whole, before
anything was read or with its body put back: another route, a ``SCRIPT_NAME``, a path or query string
that is not ASCII, a body without ``Content-Length`` (chunked), larger than allowed (Flask's 413) or cut short.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  (registers the "werkzeug.url_quote" codec error handler used below)
from werkzeug.http import HTTP_STATUS_CODES

from gateway.calls import REQUEST_ID_HEADER, Call, RouteReply
from gateway.context import Gateway
from gateway.errors import exception_reply
from gateway.routes import ROUTES, Route, serve

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


#: what werkzeug's ``Response`` sends for each status (the reason upper-cased)
STATUS_LINES = {status: f"{status} {reason.upper()}" for status, reason in HTTP_STATUS_CODES.items()}


def query_args(query_string: str) -> dict[str, str] | None:
    """The query's parameters as ``request.args.get`` reads them (the first of a repeated one), or
    ``None`` when it is not ASCII (werkzeug's decoding then matters: Flask answers). Without an escape
    (``%``, ``+``) that is a plain split, which is what werkzeug's ``parse_qsl`` does then; with one,
    ``parse_qsl`` as werkzeug calls it."""
    if not query_string:
        return {}
    if not query_string.isascii():
        return None
    args: dict[str, str] = {}
    if "%" in query_string or "+" in query_string:
        for key, value in parse_qsl(query_string, keep_blank_values=True, errors="werkzeug.url_quote"):
            args.setdefault(key, value)
        return args
    for pair in query_string.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            args.setdefault(key, value)
    return args


class FastPath:
    """WSGI middleware answering the table's hot routes; every other request goes to ``flask_wsgi``."""

    def __init__(self, gw: Gateway, flask_wsgi: WSGIApp, routes: Iterable[Route] = ROUTES) -> None:
        self.gw = gw
        self.flask_wsgi = flask_wsgi
        hot = [route for route in routes if route.hot]
        self.exact = {(r.method, r.rule): r for r in hot if "<" not in r.rule}
        self.ruled = [r for r in hot if "<" in r.rule]
        self.limit = gw.settings.max_payload_bytes
        #: requests answered here (not by Flask); approximate under threads (for tests)
        self.served = 0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        matched = self.match(environ)
        if matched is None:
            return self.flask_wsgi(environ, start_response)
        route, path_args = matched
        args = query_args(environ.get("QUERY_STRING", ""))
        body = self.body(environ) if args is not None else None
        if args is None or body is None:
            return self.flask_wsgi(environ, start_response)
        call = Call(self.gw, route.method, environ["PATH_INFO"], args, lambda: body,
                    environ.get("HTTP_AUTHORIZATION", ""), started=started)
        try:
            reply = serve(route, call, path_args)
        except Exception as exc:
            reply = exception_reply(exc, call)
        return self.respond(start_response, route, call, reply)

    def match(self, environ: dict[str, Any]) -> tuple[Route, dict[str, str]] | None:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if environ.get("SCRIPT_NAME") or not path.isascii():
            return None
        route = self.exact.get((method, path))
        if route is not None:
            return route, {}
        for route in self.ruled:
            if route.method == method and (found := route.pattern.match(path)) is not None:
                return route, found.groupdict()
        return None

    def body(self, environ: dict[str, Any]) -> bytes | None:
        """The body when its ``Content-Length`` is given and within the limit, read whole; else ``None``
        (and what was read is put back for Flask)."""
        length = environ.get("CONTENT_LENGTH")
        if not length or not length.isdigit() or environ.get("HTTP_TRANSFER_ENCODING"):
            return None
        size = int(length)
        if size > self.limit:
            return None
        data: bytes = environ["wsgi.input"].read(size) if size else b""
        if len(data) != size:
            environ["wsgi.input"] = io.BytesIO(data)
            return None
        return data

    def respond(self, start_response: StartResponse, route: Route, call: Call, reply: RouteReply) -> Iterable[bytes]:
        headers = [("Content-Type", reply.content_type), *reply.headers, (REQUEST_ID_HEADER, call.tid)]
        body = reply.body
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
            body = [body]
        start_response(STATUS_LINES.get(reply.status) or f"{reply.status} UNKNOWN", headers)
        self.gw.metrics.observe_request(route.rule, route.method, reply.status, time.perf_counter() - call.started)
        self.served += 1
        return body
