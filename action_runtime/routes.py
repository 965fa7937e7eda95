"""The runtime's one route table, free of any web framework: (method, path, body bytes) in, an :class:`HttpReply` out.

The lean HTTP/1.1 server of :mod:`action_runtime.httpserver` serves it (in the runtime process, and
in-process in tests: :class:`action_runtime.server.RuntimeServer`). The bodies are those of
:mod:`faas_llm.runtime_protocol` (OpenWhisk action protocol, Knative runtime contract, migration):

- ``POST /init``  ``{value: {name, main, code, binary, env, model, checkpoint}}``, once (403 after)
- ``POST /run``   ``{value, namespace, action_name, action_version, activation_id, transaction_id,
  deadline}``: a JSON result, or with ``value.stream`` true an NDJSON stream of events
- ``POST /``      Knative's single entry point: ``{init?, value, ...}`` like /run (initialising first
  when ``init`` is given), or a bare parameters object
- ``GET /ready``  200 once initialised, 503 before (the readiness probe); ``GET /health`` always 200
- ``POST /export`` and ``POST /prefill``: migration
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from action_runtime.service import Reply, RuntimeService, Stream
from faas_llm.errors import (
    FaasLLMError,
    ForbiddenError,
    InternalError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
)
from faas_llm.runtime_protocol import (
    EXPORT_PATH,
    HEALTH_PATH,
    INIT_PATH,
    JSON_TYPE,
    KNATIVE_PATH,
    NDJSON_TYPE,
    PREFILL_PATH,
    READY_PATH,
    RUN_PATH,
    error_body,
)

log = logging.getLogger(__name__)

STREAM_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))


@dataclass(frozen=True)
class HttpReply:
    status: int
    #: the whole body, or the chunks of a streamed one (NDJSON lines)
    body: bytes | Iterator[bytes]
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[bytes], HttpReply]


def json_reply(body: Any, status: int = 200) -> HttpReply:
    return HttpReply(status, json.dumps(body, separators=(",", ":")).encode())


def error_reply(exc: FaasLLMError, status: int | None = None) -> HttpReply:
    """An :class:`~faas_llm.runtime_protocol.ErrorBody` reply (``status``: when not the error's own)."""
    body = error_body(exc)
    if status is not None:
        body["http_status"] = status
    return json_reply(body, status or exc.http_status)


def too_large_reply() -> HttpReply:
    return error_reply(PayloadTooLargeError())


def malformed_reply() -> HttpReply:
    return error_reply(RequestError("The request was malformed."))


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
        return HttpReply(200, _ndjson(outcome.events), NDJSON_TYPE, STREAM_HEADERS)
    if outcome.encoded is not None:
        return HttpReply(outcome.status, outcome.encoded)
    return json_reply(outcome.body, outcome.status)


class RuntimeRoutes:
    """The route table over one :class:`RuntimeService`."""

    def __init__(self, service: RuntimeService) -> None:
        self.service = service
        self.table: dict[str, dict[str, Handler]] = {
            INIT_PATH: {"POST": self.init},
            RUN_PATH: {"POST": self.run},
            KNATIVE_PATH: {"POST": self.single_entrypoint},
            READY_PATH: {"GET": self.ready},
            HEALTH_PATH: {"GET": self.health},
            EXPORT_PATH: {"POST": self.export},
            PREFILL_PATH: {"POST": self.prefill},
        }

    def handle(self, method: str, path: str, body: bytes) -> HttpReply:
        """Answer one request; never raises (errors become error replies)."""
        methods = self.table.get(path.split("?", 1)[0])
        try:
            if methods is None:
                raise NotFoundError(f"no route {path}")
            handler = methods.get(method)
            if handler is None:
                return error_reply(RequestError(f"Method {method} not allowed on {path}."), 405)
            return handler(body)
        except FaasLLMError as exc:
            return error_reply(exc)
        except Exception:
            log.exception("%s %s failed", method, path)
            return error_reply(InternalError())

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
