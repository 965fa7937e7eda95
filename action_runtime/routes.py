"""The runtime's routes, free of any web framework: (method, path, body bytes) in, an :class:`HttpReply` out.

One table serves both faces of the runtime: the lean HTTP/1.1 server the runtime process runs
(:mod:`action_runtime.httpserver`) and the WSGI app of :func:`action_runtime.app.create_app`
(in-process use). Routes (OpenWhisk action protocol, Knative runtime contract, migration control):

- ``POST /init``  ``{value: {name, main, code, binary, env, model, checkpoint}}``, once (403 after)
- ``POST /run``   ``{value, namespace, action_name, action_version, activation_id, transaction_id,
  deadline}``: a JSON result, or with ``value.stream`` true an NDJSON stream of events
- ``POST /``      Knative's single entry point: ``{init?, value, ...}`` like /run (initialising first
  when ``init`` is given), or a bare parameters object
- ``GET /ready``  200 once initialised, 503 before (the readiness probe); ``GET /health`` always 200
- ``POST /export`` and ``POST /prefill``: migration (see :mod:`action_runtime.protocol`)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from action_runtime.responses import error_body
from action_runtime.service import Reply, RuntimeService, Stream
from faas_llm.errors import FaasLLMError, ForbiddenError, InternalError, NotFoundError, RequestError

log = logging.getLogger(__name__)

JSON = "application/json"
NDJSON = "application/x-ndjson"
STREAM_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))


@dataclass(frozen=True)
class HttpReply:
    status: int
    #: the whole body, or the chunks of a streamed one (NDJSON lines)
    body: bytes | Iterator[bytes]
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[bytes], HttpReply]


def json_reply(body: Any, status: int = 200) -> HttpReply:
    return HttpReply(status, json.dumps(body, separators=(",", ":")).encode())


def too_large_reply() -> HttpReply:
    return json_reply({"error": "The request content was too large.", "http_status": 413}, 413)


def _ndjson(events: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    try:
        for event in events:
            yield json.dumps(event, separators=(",", ":")).encode() + b"\n"
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # a client gone mid-stream: the run's generator ends (and its activation with it)


def _loads(body: bytes) -> Any:
    """The body's JSON, or ``None`` when it is not JSON (each route decides what that means)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _object(body: bytes) -> dict[str, Any]:
    data = _loads(body)
    if not isinstance(data, dict):
        raise RequestError("The request content was malformed: send a JSON object.")
    return data


def _reply(outcome: Reply | Stream) -> HttpReply:
    if isinstance(outcome, Stream):
        return HttpReply(200, _ndjson(outcome.events), NDJSON, STREAM_HEADERS)
    if outcome.encoded is not None:
        return HttpReply(outcome.status, outcome.encoded)
    return json_reply(outcome.body, outcome.status)


class RuntimeRoutes:
    """The route table over one :class:`RuntimeService`."""

    def __init__(self, service: RuntimeService) -> None:
        self.service = service
        self.table: dict[str, dict[str, Handler]] = {
            "/init": {"POST": self.init},
            "/run": {"POST": self.run},
            "/": {"POST": self.single_entrypoint},
            "/ready": {"GET": self.ready},
            "/health": {"GET": self.health},
            "/export": {"POST": self.export},
            "/prefill": {"POST": self.prefill},
        }

    def handle(self, method: str, path: str, body: bytes) -> HttpReply:
        """Answer one request; never raises (errors become error replies)."""
        methods = self.table.get(path.split("?", 1)[0])
        try:
            if methods is None:
                raise NotFoundError(f"no route {path}")
            handler = methods.get(method)
            if handler is None:
                return json_reply({"error": f"Method {method} not allowed on {path}.", "http_status": 405}, 405)
            return handler(body)
        except FaasLLMError as exc:
            return json_reply(error_body(exc), exc.http_status)
        except Exception:
            log.exception("%s %s failed", method, path)
            return json_reply(error_body(InternalError()), 500)

    # --- the routes ----------------------------------------------------------------------
    def init(self, body: bytes) -> HttpReply:
        return json_reply(self.service.init(_object(body)))

    def run(self, body: bytes) -> HttpReply:
        return _reply(self.service.run(_loads(body)))

    def single_entrypoint(self, body: bytes) -> HttpReply:
        data = _object(body)
        if "value" not in data:
            data = {"value": data}
        if "init" in data and not self.service.ready:
            try:
                self.service.init({"value": data.pop("init")})
            except ForbiddenError:
                pass  # a concurrent request initialised it first
        return _reply(self.service.run(data))

    def ready(self, _body: bytes) -> HttpReply:
        if self.service.ready:
            return json_reply({"ready": True})
        return json_reply({"ready": False, **self.service.health()}, 503)

    def health(self, _body: bytes) -> HttpReply:
        return json_reply(self.service.health())

    def export(self, body: bytes) -> HttpReply:
        return json_reply(self.service.export(_object(body)))

    def prefill(self, body: bytes) -> HttpReply:
        return json_reply(self.service.prefill(_object(body)))
