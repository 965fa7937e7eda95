"""Errors to responses, in one place.

A run's error is an *application error* (HTTP 200 with an ``{"error": ...}`` object: bad
parameters, a result over the size limit) or a *developer error* (a non-200 status: the run
timed out, the action's code crashed), as the OpenWhisk action protocol distinguishes them.
Every error body says which: ``activation_status`` is OpenWhisk's ``statusCode`` (1 application,
2 developer, 3 internal) and ``http_status`` the status a client-facing API should answer with.
"""

from __future__ import annotations

import json
from typing import Any

from faas_llm.errors import ActivationStatus, ApplicationError, FaasLLMError, RequestError


def activation_status(exc: FaasLLMError) -> ActivationStatus:
    if isinstance(exc, RequestError):
        return ActivationStatus.APPLICATION_ERROR
    return exc.activation_status


def error_body(exc: FaasLLMError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": exc.message,
        "type": exc.openai_type,
        "http_status": exc.http_status,
        "activation_status": int(activation_status(exc)),
    }
    if exc.details:
        body["details"] = exc.details
    return body


def run_error_status(exc: FaasLLMError) -> int:
    """The HTTP status of ``/run``'s reply for ``exc``: 200 for an application error."""
    return 200 if activation_status(exc) is ActivationStatus.APPLICATION_ERROR else exc.http_status


def encode_result(result: Any, limit: int) -> bytes:
    """The JSON of ``result``; raises :class:`ApplicationError` when it is larger than ``limit`` bytes."""
    data = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > limit:
        raise ApplicationError(
            f"The action produced a response that exceeded the allowed length: {len(data)} > {limit} bytes.",
            size=len(data), limit=limit,
        )
    return data
