"""Errors to responses: the one place both faces' error shapes are made.

- OpenWhisk (``/api/v1`` and everything not OpenAI): ``{"error": msg, "code": <transaction id>}``.
- OpenAI (``/v1``): ``{"error": {"message", "type", "code"}}``.

Every 401 carries OpenWhisk's ``WWW-Authenticate`` challenge. Services raise errors from
:mod:`faas_llm.errors`; werkzeug's own HTTP errors (unknown route, wrong method, body too
large) and anything unexpected are mapped here too, so no route builds an error body.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from faas_llm.errors import AuthError, FaasLLMError, InternalError, NotFoundError, PayloadTooLargeError, RequestError
from gateway.http_auth import confirm_deferred, forget_deferred

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
CHALLENGE = 'Basic realm="OpenWhisk secure realm"'


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX) or path == OPENAI_PREFIX.rstrip("/")


def openai_code(exc: FaasLLMError) -> str:
    """``NotFoundError`` -> ``not_found``: a stable machine-readable code per error class."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__.removesuffix("Error")).lower() or "error"


def openai_error_body(exc: FaasLLMError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.openai_type, "code": openai_code(exc)}}


def openwhisk_error_body(exc: FaasLLMError) -> dict[str, Any]:
    return {"error": exc.message, "code": transaction_id()}


def transaction_id() -> str:
    return str(getattr(g, "tid", "") or "")


def error_response(exc: FaasLLMError, status: int | None = None) -> Response:
    if (status or exc.http_status) == 401:
        forget_deferred()
    else:
        try:  # a key taken from the worker's cache is confirmed before any other error is told
            confirm_deferred()
        except AuthError as auth_error:
            exc, status = auth_error, None
        except Exception:  # e.g. Redis down: the original error stands
            log.warning("could not confirm the caller's key before an error response", exc_info=True)
    body = openai_error_body(exc) if is_openai_path(request.path) else openwhisk_error_body(exc)
    response = jsonify(body)
    response.status_code = status or exc.http_status
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = CHALLENGE
    return response


def payload_too_large(size: int | None, limit: int) -> PayloadTooLargeError:
    shown = f"{size}" if size is not None else f"more than {limit}"
    return PayloadTooLargeError(f"Request larger than allowed: {shown} > {limit} bytes.")


def _handle_faas(exc: FaasLLMError) -> Response:
    if exc.http_status >= 500:
        log.warning("request %s %s failed: %s", request.method, request.path, exc.message)
    return error_response(exc)


def _handle_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    if isinstance(exc, RequestEntityTooLarge):
        limit = max((request.max_content_length or 1) - 1, 0)  # see MAX_CONTENT_LENGTH in create_app
        return error_response(payload_too_large(request.content_length, limit))
    if status == 404:
        return error_response(NotFoundError())
    if status == 405:
        return error_response(RequestError(f"Method {request.method} not allowed on {request.path}."), 405)
    if status < 500:
        return error_response(RequestError(exc.description or "The request content was malformed."), status)
    return error_response(InternalError(), status)


def _handle_unexpected(exc: Exception) -> Response:
    log.exception("unexpected error in %s %s", request.method, request.path)
    return error_response(InternalError())


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(FaasLLMError, _handle_faas)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(Exception, _handle_unexpected)
