"""A run's errors and results as ``/run`` replies, in one place.

A run's error is an *application error* (HTTP 200 with an ``{"error": ...}`` object: bad
parameters, a result over the size limit) or a *developer error* (a non-200 status: the run
timed out, the action's code crashed), as the OpenWhisk action protocol distinguishes them.
The error body itself is the contract's (:func:`faas_llm.runtime_protocol.error_body`).
"""

from __future__ import annotations

import json
from typing import Any

from faas_llm.errors import ActivationStatus, ApplicationError, FaasLLMError
from faas_llm.runtime_protocol import error_activation_status


def run_error_status(exc: FaasLLMError) -> int:
    """The HTTP status of ``/run``'s reply for ``exc``: 200 for an application error."""
    return 200 if error_activation_status(exc) is ActivationStatus.APPLICATION_ERROR else exc.http_status


def encode_result(result: Any, limit: int) -> bytes:
    """The JSON of ``result``; raises :class:`ApplicationError` when it is larger than ``limit`` bytes."""
    data = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > limit:
        raise ApplicationError(
            f"The action produced a response that exceeded the allowed length: {len(data)} > {limit} bytes.",
            size=len(data), limit=limit,
        )
    return data
