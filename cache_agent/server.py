"""The agent's unix-socket server: JSON lines in, JSON lines out (one reply per request),
typed by :mod:`faas_llm.cache_protocol`; one thread per connection."""

from __future__ import annotations

import contextlib
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cache_agent.agent import CacheAgent
from faas_llm.cache_protocol import (
    MAX_LINE_BYTES,
    REQUEST_ADAPTER,
    AcquireRequest,
    ErrorReply,
    EvictRequest,
    HeartbeatRequest,
    MetricsReply,
    MetricsRequest,
    OkReply,
    PrefetchRequest,
    ReleaseRequest,
    StatusRequest,
    error_reply,
)
from faas_llm.errors import ConfigError, RequestError

log = logging.getLogger(__name__)
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL


def dispatch(agent: CacheAgent, request: Any, send: Callable[[BaseModel], Any] | None = None) -> BaseModel:
    """One typed request -> its reply (errors raised, turned into ErrorReply by the caller). ``send``
    writes an intermediate line (an acquire's AcquireMeta, when it asked for ``early_meta``)."""
    if isinstance(request, AcquireRequest):
        return agent.acquire(request, send if request.early_meta else None)
    if isinstance(request, ReleaseRequest):
        agent.release(request.lease_id)
        return OkReply()
    if isinstance(request, HeartbeatRequest):
        return agent.heartbeat(request.lease_ids)
    if isinstance(request, PrefetchRequest):
        return agent.prefetch(request)
    if isinstance(request, EvictRequest):
        return agent.evict(request)
    if isinstance(request, StatusRequest):
        return agent.status()
    if isinstance(request, MetricsRequest):
        return MetricsReply(text=agent.metrics.text())
    raise RequestError(f"unknown request {type(request).__name__}")


def handle_line(agent: CacheAgent, line: bytes, send: Callable[[BaseModel], Any] | None = None) -> BaseModel:
    try:
        request = REQUEST_ADAPTER.validate_json(line)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors())
        return ErrorReply(error=f"invalid request: {problems}", kind="RequestError")
    try:
        return dispatch(agent, request, send)
    except Exception as exc:
        if not isinstance(exc, RequestError):
            log.warning("request %s failed: %s", type(request).__name__, exc, exc_info=not hasattr(exc, "message"))
        return error_reply(exc)


class _Handler(socketserver.StreamRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        while True:
            try:
                line = self.rfile.readline(MAX_LINE_BYTES + 1)
            except (ConnectionError, OSError):
                return
            if not line:
                return
            if len(line) > MAX_LINE_BYTES:
                reply: BaseModel = ErrorReply(error=f"request longer than {MAX_LINE_BYTES} bytes", kind="RequestError")
                self._send(reply)
                return
            if not line.strip():
                continue
            if not self._send(handle_line(self.server.agent, line, self._send)):
                return

    def _send(self, reply: BaseModel) -> bool:
        try:
            self.wfile.write(reply.model_dump_json().encode() + b"\n")
            self.wfile.flush()
        except (ConnectionError, OSError):
            return False
        return True


class AgentServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, agent: CacheAgent) -> None:
        if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
            raise ConfigError(f"cache socket path {path} is longer than {MAX_SOCKET_PATH} bytes (a unix socket limit)")
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket of a dead agent
        self.agent = agent
        self.path = path
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o660)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="cache-agent-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
