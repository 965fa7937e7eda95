"""What a route handler sees and answers, without a web framework: a :class:`Call` in, a :class:`RouteReply` out.

Both layers that serve the route table build the same :class:`Call` and send the same :class:`RouteReply`:
the Flask app (every route; ``gateway/app.py``) and the thin WSGI layer under it that serves the hot
routes without Flask's request and response objects (``gateway/fastpath.py``). So a route's behaviour
(its checks, their order, its status, body bytes and headers) is written once, in its handler.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faas_llm.errors import RequestError

if TYPE_CHECKING:
    from faas_llm.auth import Identity
    from gateway.context import Gateway

JSON = "application/json"
ACTIVATION_HEADER = "x-openwhisk-activation-id"
REQUEST_ID_HEADER = "X-Request-ID"


def new_transaction_id() -> str:
    return secrets.token_hex(16)


@dataclass(slots=True)
class Call:
    """One HTTP request: what it asked (method, path, query, body) and what the gateway learnt of it
    (its transaction id, when it started, the caller once authenticated)."""

    gw: Gateway
    method: str
    path: str
    #: the query string's parameters (the first value of a repeated one, as Flask's ``request.args.get``)
    args: Mapping[str, str]
    #: the body's bytes, size-checked by the layer that read it (413 raised there)
    read_body: Callable[[], bytes]
    #: the ``Authorization`` header ('' when absent)
    authorization: str = ""
    tid: str = field(default_factory=new_transaction_id)
    started: float = field(default_factory=time.perf_counter)
    identity: Identity | None = None
    #: the caller's key was taken from this worker's cache unverified (see gateway.http_auth)
    deferred_auth: bool = False

    def json_body(self, *, default: Any = None) -> Any:
        """The body's JSON; ``default`` when the body is empty (``None``: a body is required)."""
        return parse_json(self.read_body(), default)

    def json_object(self, *, required: bool = False) -> dict[str, Any]:
        """The body as a JSON object (``{}`` when empty, unless ``required``)."""
        body = self.json_body(default=None if required else {})
        if not isinstance(body, dict):
            raise RequestError("The request content was malformed: expected a JSON object.")
        return body


def _not_json(name: str) -> Any:
    """Python's json accepts NaN and Infinity; JSON (RFC 8259) does not, and they break records downstream."""
    raise ValueError(f"{name} is not a JSON value")


def parse_json(data: bytes, default: Any = None) -> Any:
    if not data.strip():
        if default is None:
            raise RequestError("The request content was malformed: a JSON body is required.")
        return default
    try:
        return json.loads(data, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"The request content was malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class RouteReply:
    """A response: status, body (bytes, or chunks sent as they come) and the route's own headers (the
    layer adds the transport's: ``Content-Length``, the request id)."""

    status: int
    body: bytes | Iterable[bytes]
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_bytes(value: Any) -> bytes:
    """The JSON every response body is written in: compact, ASCII, keys in their order, a final newline
    (what Flask's ``jsonify`` writes with this app's settings)."""
    return f"{json.dumps(value, separators=(',', ':'))}\n".encode()


def json_reply(value: Any, status: int = 200, activation_id: str | None = None) -> RouteReply:
    return raw_json_reply(json_bytes(value), status, activation_id)


def raw_json_reply(body: bytes, status: int = 200, activation_id: str | None = None) -> RouteReply:
    """A reply whose body is JSON already (e.g. a stored record, passed on unparsed)."""
    return RouteReply(status, body, JSON, ((ACTIVATION_HEADER, activation_id),) if activation_id else ())
