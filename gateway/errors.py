"""Errors to responses: the one place both faces' error shapes are made.

- OpenWhisk (``/api/v1`` and everything not OpenAI): ``{"error": msg, "code": <transaction id>}``.
- OpenAI (``/v1``): ``{"error": {"message", "type", "code"}}``.

Every 401 carries OpenWhisk's ``WWW-Authenticate`` challenge; every 503 a ``Retry-After``. Services
raise errors from :mod:`faas_llm.errors`. A Redis that cannot serve for now (unreachable, timed out,
``LOADING`` its data set, ``READONLY``, ``BUSY`` with a script: :func:`~faas_llm.errors.store_unavailable`)
is a 503, as OpenWhisk's controller answers when it cannot reach its message bus. Werkzeug's own HTTP
errors (unknown route, wrong method, body too large) and anything unexpected are mapped here too, so
no route builds an error body. :func:`exception_reply` serves both layers (the Flask app's error
handlers and the hot-route layer), on the request's :class:`~gateway.calls.Call`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from faas_llm.errors import (
    AuthError,
    FaasLLMError,
    InternalError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    StoreUnavailableError,
    store_unavailable,
)
from gateway.calls import Call, RouteReply, json_bytes
from gateway.http_auth import confirm_deferred, forget_deferred

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
CHALLENGE = 'Basic realm="OpenWhisk secure realm"'
#: seconds a client is told to wait before retrying a 503 (Redis back from a restart or a stall)
RETRY_AFTER_S = 1


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/")


def openai_code(exc: FaasLLMError) -> str:
    """``NotFoundError`` -> ``not_found``: a stable machine-readable code per error class."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__.removesuffix("Error")).lower() or "error"


def openai_error_body(exc: FaasLLMError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.openai_type, "code": openai_code(exc)}}


def error_reply(exc: FaasLLMError, call: Call, status: int | None = None) -> RouteReply:
    if (status or exc.http_status) == 401:
        forget_deferred(call)
    elif not isinstance(exc, StoreUnavailableError):  # the check would fail the same way
        try:  # a key taken from the worker's cache is confirmed before any other error is told
            confirm_deferred(call)
        except AuthError as auth_error:
            exc, status = auth_error, None
        except Exception:  # e.g. Redis down: the original error stands
            log.warning("could not confirm the caller's key before an error response", exc_info=True)
    body = openai_error_body(exc) if is_openai_path(call.path) else {"error": exc.message, "code": call.tid}
    status = status or exc.http_status
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = (("WWW-Authenticate", CHALLENGE),)
    elif status == 503 and exc.recoverable:
        headers = (("Retry-After", str(RETRY_AFTER_S)),)
    return RouteReply(status, json_bytes(body), headers=headers)


def exception_reply(exc: Exception, call: Call) -> RouteReply:
    """The reply to an exception a route (or its authentication) raised."""
    if not isinstance(exc, FaasLLMError):
        unavailable = store_unavailable(exc)
        if unavailable is None:
            log.error("unexpected error in %s %s", call.method, call.path, exc_info=exc)
            return error_reply(InternalError(), call)
        log.warning("request %s %s: Redis cannot serve now: %r", call.method, call.path, exc)
        exc = unavailable
    elif exc.http_status >= 500:
        log.warning("request %s %s failed: %s", call.method, call.path, exc.message)
    return error_reply(exc, call)


def payload_too_large(size: int | None, limit: int) -> PayloadTooLargeError:
    shown = f"{size}" if size is not None else f"more than {limit}"
    return PayloadTooLargeError(f"Request larger than allowed: {shown} > {limit} bytes.")


def http_exception_error(exc: HTTPException, call: Call, content_length: int | None,
                         max_content_length: int | None) -> tuple[FaasLLMError, int | None]:
    """The error (and the status, when not the error's own) a werkzeug HTTP error of the Flask layer
    (no route, wrong method, body over ``MAX_CONTENT_LENGTH``) stands for."""
    status = exc.code or 500
    if isinstance(exc, RequestEntityTooLarge):
        limit = max((max_content_length or 1) - 1, 0)  # see MAX_CONTENT_LENGTH in create_app
        return payload_too_large(content_length, limit), None
    if status == 404:
        return NotFoundError(), None
    if status == 405:
        return RequestError(f"Method {call.method} not allowed on {call.path}."), 405
    if status < 500:
        return RequestError(exc.description or "The request content was malformed."), status
    return InternalError(), status
