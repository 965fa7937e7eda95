"""Helpers every blueprint uses: the JSON body (size-checked), the caller, the namespace."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, g, jsonify, request

from faas_llm.auth import Identity
from faas_llm.errors import RequestError
from gateway.context import gateway
from gateway.errors import payload_too_large
from gateway.http_auth import current_identity, resolve_namespace

ACTIVATION_HEADER = "x-openwhisk-activation-id"
#: after refusing a body as too large, read and drop up to this much of it so the 413 reaches a
#: client that sends its whole body before reading (closing on unread data resets the connection)
DRAIN_MAX_BYTES = 16 * 1024 * 1024


def discard_body(content_length: int) -> None:
    """Read and drop a refused body (bounded by its length and DRAIN_MAX_BYTES; nothing is kept)."""
    if content_length > DRAIN_MAX_BYTES:
        return
    stream = request.environ.get("wsgi.input")
    remaining = content_length
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        remaining -= len(chunk)


def json_body(*, default: Any = None) -> Any:
    """The request's JSON; ``default`` when the body is empty (``None``: a body is required).

    The size is checked from ``Content-Length`` before anything is read, and enforced again
    while reading (a chunked body has no length): 413 either way.
    """
    limit = gateway().settings.max_payload_bytes
    if request.content_length is not None and request.content_length > limit:
        discard_body(request.content_length)
        raise payload_too_large(request.content_length, limit)
    data = request.get_data(cache=True)  # the stream stops at MAX_CONTENT_LENGTH = limit + 1
    if len(data) > limit:
        raise payload_too_large(None, limit)
    if not data.strip():
        if default is None:
            raise RequestError("The request content was malformed: a JSON body is required.")
        return default
    try:
        return json.loads(data, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"The request content was malformed: {exc}") from None


def _not_json(name: str) -> Any:
    """Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and they break records downstream."""
    raise ValueError(f"{name} is not a JSON value")


def json_object_body(*, required: bool = False) -> dict[str, Any]:
    body = json_body(default=None if required else {})
    if not isinstance(body, dict):
        raise RequestError("The request content was malformed: expected a JSON object.")
    return body


def caller_namespace(namespace: str) -> tuple[Identity, str]:
    identity = current_identity()
    return identity, resolve_namespace(identity, namespace)


def transaction_id() -> str:
    return str(g.tid)


def raw_json_response(text: str, status: int = 200, activation_id: str | None = None) -> Response:
    """A response whose body is ``text``, JSON already (e.g. a stored record)."""
    response = Response(text, status=status, mimetype="application/json")
    if activation_id:
        response.headers[ACTIVATION_HEADER] = activation_id
    return response


def json_response(body: Any, status: int = 200, activation_id: str | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    if activation_id:
        response.headers[ACTIVATION_HEADER] = activation_id
    return response
