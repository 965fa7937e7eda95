"""The warm invoke routes without Flask's per-request machinery (a WSGI layer in front of the app).

A blocking invoke is the gateway's hot path; under Flask about a fifth of its CPU was request and
response objects, URL matching and the before/after hooks. :class:`FastPath` serves
``POST /api/v1/namespaces/{ns}/actions/{name}`` and the non-streamed ``POST /v1/completions`` and
``/v1/chat/completions`` itself when the request is the common case, with the same services, the same
metrics and byte-for-byte the same responses (tests/gateway compares them). Anything else is handed to
the Flask app unchanged:

- before anything was written (no cached credentials, no ``Content-Length``, a body or query string
  the routes would refuse, an action this worker has not read yet, a streamed completion, ...): the
  whole request goes to Flask (its body put back), which answers it as it always does;
- an error once the invocation was submitted (429, a revoked key's 401, a deleted action's 404, Redis
  down): the exception is answered by the app's own error handlers and after-request hooks, in a
  request context of this request (so the same body, ``code``, headers and metrics).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, g
from werkzeug.http import HTTP_STATUS_CODES

from faas_llm.auth import Identity
from faas_llm.types import parse
from gateway.context import EXTENSION, Gateway
from gateway.protocol import ChatCompletionRequest, CompletionRequest, InvokeQuery
from gateway.routes.common import ACTIVATION_HEADER
from gateway.services.invoke import status_code_http

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

INVOKE_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/actions/([^/]+)\Z")
INVOKE_RULE = "/api/v1/namespaces/<namespace>/actions/<name>"
OPENAI_PATHS: dict[str, type[CompletionRequest] | type[ChatCompletionRequest]] = {
    "/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest,
}
#: the query parameters the invoke route reads (any other, or a repeated one: Flask answers)
INVOKE_ARGS = frozenset({"blocking", "result", "timeout"})
REQUEST_ID_HEADER = "X-Request-ID"


class Fallback(Exception):
    """Not the common case: let Flask answer the whole request."""


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _query(query_string: str) -> dict[str, str]:
    """The invoke route's query parameters, when plain ASCII ``key=value`` pairs of known keys."""
    out: dict[str, str] = {}
    if not query_string:
        return out
    if not query_string.isascii() or "%" in query_string or "+" in query_string or ";" in query_string:
        raise Fallback
    for pair in query_string.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if key not in INVOKE_ARGS or key in out:
            raise Fallback
        out[key] = value
    return out


class FastPath:
    def __init__(self, app: Flask, flask_wsgi: WSGIApp) -> None:
        self.app = app
        self.flask_wsgi = flask_wsgi
        self.gw: Gateway = app.extensions[EXTENSION]
        self.limit = self.gw.settings.max_payload_bytes
        #: requests answered here (not by Flask); approximate under threads (for tests)
        self.served = 0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("SCRIPT_NAME"):
            return self.flask_wsgi(environ, start_response)
        path = environ.get("PATH_INFO", "")
        openai = OPENAI_PATHS.get(path)
        match = None if openai is not None else INVOKE_PATH.match(path)
        if (openai is None and match is None) or not path.isascii():
            return self.flask_wsgi(environ, start_response)
        started = time.perf_counter()
        header: str = environ.get("HTTP_AUTHORIZATION") or ""
        identity = self.gw.credentials.get(header) if header else None
        if identity is None:
            return self.flask_wsgi(environ, start_response)
        body: bytes | None = None
        try:
            body = self._body(environ)
            params = self._json_object(body)
            if openai is not None:
                return self._openai(environ, start_response, path, openai, identity, header, params, started)
            assert match is not None
            return self._invoke(environ, start_response, match, identity, header, params, started)
        except Fallback:
            if body is not None:
                environ["wsgi.input"] = io.BytesIO(body)
            return self.flask_wsgi(environ, start_response)

    # --- the request --------------------------------------------------------------------
    def _body(self, environ: dict[str, Any]) -> bytes:
        length = environ.get("CONTENT_LENGTH")
        if not length or not length.isdigit() or environ.get("HTTP_TRANSFER_ENCODING"):
            raise Fallback
        size = int(length)
        if size > self.limit:
            raise Fallback
        data: bytes = environ["wsgi.input"].read(size) if size else b""
        if len(data) != size:
            environ["wsgi.input"] = io.BytesIO(data)
            raise Fallback
        return data

    @staticmethod
    def _json_object(data: bytes) -> dict[str, Any] | None:
        """The body as a JSON object (``None``: empty); anything the routes would refuse falls back."""
        if not data.strip():
            return None
        try:
            value = json.loads(data, parse_constant=_not_json)
        except (ValueError, UnicodeDecodeError):
            raise Fallback from None
        if not isinstance(value, dict):
            raise Fallback
        return value

    # --- the routes -----------------------------------------------------------------------
    def _invoke(self, environ: dict[str, Any], start_response: StartResponse, match: re.Match[str],
                identity: Identity, header: str, params: dict[str, Any] | None, started: float) -> Iterable[bytes]:
        namespace, name = match.group(1), match.group(2)
        if namespace not in ("_", identity.namespace):
            raise Fallback
        gw = self.gw
        try:
            query = InvokeQuery.from_args(_query(environ.get("QUERY_STRING", "")), gw.settings.blocking_wait_max_ms)
        except Exception:
            raise Fallback from None
        if (identity.namespace, name) not in gw.invoker.action_cache:
            raise Fallback  # first invoke in this worker (or a 404): Flask's route reads it
        tid = secrets.token_hex(16)
        invoke_started = time.perf_counter()
        mode = "blocking" if query.blocking else "nonblocking"
        try:
            outcome = gw.invoker.invoke(identity, identity.namespace, name, params or {}, tid,
                                        blocking=query.blocking, timeout_ms=query.timeout_ms)
            if outcome.record_json is None:
                gw.metrics.observe_invoke("openwhisk", mode, "accepted", time.perf_counter() - invoke_started)
                accepted = self._json({"activationId": outcome.activation_id})
                return self._reply(start_response, INVOKE_RULE, 202, accepted, outcome.activation_id, tid, started)
            record = json.loads(outcome.record_json)
            status = status_code_http(record["response"]["statusCode"])
            gw.metrics.observe_invoke("openwhisk", mode, str(status), time.perf_counter() - invoke_started)
            text = self._json(record["response"]["result"]) if query.result else outcome.record_json.encode()
            return self._reply(start_response, INVOKE_RULE, status, text, outcome.activation_id, tid, started)
        except Exception as exc:  # answered by the app's own handlers
            return self._flask_error(environ, start_response, exc, identity, header, tid, started)

    def _openai(self, environ: dict[str, Any], start_response: StartResponse, path: str,
                model: type[CompletionRequest] | type[ChatCompletionRequest], identity: Identity, header: str,
                params: dict[str, Any] | None, started: float) -> Iterable[bytes]:
        gw = self.gw
        if params is None:
            raise Fallback
        try:
            req = parse(model, params)
        except Exception:
            raise Fallback from None
        if req.stream or (identity.namespace, req.model) not in gw.invoker.action_cache:
            raise Fallback
        if isinstance(req, CompletionRequest):
            try:
                req.prompt_text()
            except Exception:
                raise Fallback from None
        tid = secrets.token_hex(16)
        invoke_started = time.perf_counter()
        try:
            try:
                done = gw.openai.complete(identity, req, tid)
            except Exception as exc:
                status = getattr(exc, "http_status", None)
                if status is not None:
                    gw.metrics.observe_invoke("openai", "blocking", str(status), time.perf_counter() - invoke_started)
                raise
            gw.metrics.observe_invoke("openai", "blocking", "200", time.perf_counter() - invoke_started)
            return self._reply(start_response, path, 200, self._json(done.body), done.activation_id, tid, started)
        except Exception as exc:  # answered by the app's own handlers
            return self._flask_error(environ, start_response, exc, identity, header, tid, started)

    # --- the response -------------------------------------------------------------------------
    def _json(self, body: Any) -> bytes:
        """What ``jsonify(body)`` sends (the app's JSON provider: compact, a newline at the end)."""
        return f"{self.app.json.dumps(body, separators=(',', ':'))}\n".encode()

    def _reply(self, start_response: StartResponse, rule: str, status: int, body: bytes, activation_id: str,
               tid: str, started: float) -> Iterable[bytes]:
        start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            (ACTIVATION_HEADER, activation_id), (REQUEST_ID_HEADER, tid),
        ])
        self.gw.metrics.observe_request(rule, "POST", status, time.perf_counter() - started)
        self.served += 1
        return [body]

    def _flask_error(self, environ: dict[str, Any], start_response: StartResponse, exc: Exception,
                     identity: Identity, header: str, tid: str, started: float) -> Iterable[bytes]:
        app = self.app
        with app.request_context(environ):
            g.tid = tid
            g.started = started
            g.identity = identity
            g.deferred_auth = (self.gw.auth, self.gw.credentials, header)
            try:
                response = app.make_response(app.handle_user_exception(exc))
            except Exception as unhandled:
                response = app.make_response(app.handle_exception(unhandled))
            response = app.process_response(response)
            return response(environ, start_response)

