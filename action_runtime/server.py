"""The runtime's one front door: the lean HTTP/1.1 server of :mod:`action_runtime.httpserver` over the
route table of :mod:`action_runtime.routes`, in one process (the model lives in it).

- The port is bound first (a clash fails at once), then torch and transformers are imported
  (the prewarm) before the first connection is accepted; ``GET /health`` answers from then on.
- No request timeout: a long generation or stream is never killed for it.
- SIGTERM (or SIGINT) is a graceful stop: the listening socket closes (new connections are
  refused), in-flight runs get ``runtime_drain_s`` to finish, then the process exits 0
  (Knative's drain, OpenWhisk's container removal) without tearing down torch.

Tests run the same server in-process: :meth:`RuntimeServer.start` (``runtime_port`` 0: a free port)
and :meth:`RuntimeServer.stop`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from faas_llm.settings import Settings

if TYPE_CHECKING:  # imported when serving: the port is bound before torch is imported
    from action_runtime.httpserver import HttpServer
    from action_runtime.loading import ModelSource
    from action_runtime.routes import HttpReply
    from action_runtime.service import RuntimeService

log = logging.getLogger("action_runtime.server")


@dataclass(frozen=True)
class ServerOptions:
    host: str
    port: int
    #: requests handled at once (more wait for a slot)
    threads: int
    drain_s: float
    max_body: int


def server_options(settings: Settings) -> ServerOptions:
    return ServerOptions(host=settings.runtime_host, port=settings.runtime_port, threads=settings.runtime_threads,
                         drain_s=settings.runtime_drain_s, max_body=settings.max_payload_bytes)


def build_service(
    settings: Settings, sources: list[ModelSource] | None = None, *, do_prewarm: bool = True,
) -> RuntimeService:
    """The runtime's service. ``do_prewarm`` imports torch and transformers now (what a prewarmed
    runtime is); with ``settings.runtime_model`` the model starts loading in the background (Knative)."""
    from action_runtime.prewarm import prewarm
    from action_runtime.service import RuntimeService

    prewarm_s = prewarm(settings) if do_prewarm else 0.0
    service = RuntimeService(settings, sources, prewarm_s=prewarm_s)
    if settings.runtime_model:
        threading.Thread(target=service.init_from_settings, name="runtime-model-init", daemon=True).start()
    return service


class RuntimeServer:
    """One runtime: :meth:`run` is the process; :meth:`start` / :meth:`stop` the same server in-process."""

    def __init__(self, settings: Settings, sources: list[ModelSource] | None = None, *,
                 do_prewarm: bool = True) -> None:
        self.settings = settings
        self.sources = sources
        self.do_prewarm = do_prewarm
        self.options = server_options(settings)
        self.http: HttpServer | None = None
        self.service: RuntimeService | None = None
        self.url = ""  # once listening: http://host:port (the port the system gave for runtime_port 0)
        self._stop = threading.Event()

    def listen(self) -> HttpServer:
        """Bind the port; connections wait in the backlog until :meth:`serve`."""
        from action_runtime.httpserver import HttpServer

        opts = self.options
        self.http = HttpServer.listen(opts.host, opts.port, self._not_ready, opts.max_body, opts.threads)
        host, port = self.http.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.http

    def serve(self, service: RuntimeService) -> None:
        """Accept connections (in a thread) and answer them from ``service``'s route table."""
        from action_runtime.routes import RuntimeRoutes

        assert self.http is not None, "listen first"
        self.service = service
        self.http.handle = RuntimeRoutes(service).handle
        threading.Thread(target=self.http.serve_forever, name="runtime-accept", daemon=True).start()

    def start(self) -> RuntimeServer:
        """Listen, build the service and serve, in this process (returns once it accepts)."""
        self.listen()
        self.serve(build_service(self.settings, self.sources, do_prewarm=self.do_prewarm))
        return self

    def stop(self, grace_s: float | None = None) -> bool:
        """Drain (stop accepting, let the runs in flight finish within ``grace_s``), then close the
        service (its cache-agent lease is given back). True when no run was left."""
        http, service, self.http, self.service = self.http, self.service, None, None  # once
        drained = http.drain(self.options.drain_s if grace_s is None else grace_s) if http is not None else True
        if service is not None:
            try:
                service.close()
            except Exception:
                log.exception("closing the service failed")
        return drained

    def run(self) -> None:
        """The runtime process: serve until SIGTERM or SIGINT, drain, exit 0."""
        from faas_llm.gcfreeze import freeze_long_lived

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.listen()
        log.info("listening at %s (pid %d)", self.url, os.getpid())
        if self._stop.is_set():
            os._exit(0)
        service = build_service(self.settings, self.sources, do_prewarm=self.do_prewarm)
        freeze_long_lived("the runtime after its prewarm")  # and again after /init (service.init)
        self.serve(service)
        while not self._stop.wait(1.0):
            pass
        if not self.stop():
            log.warning("runs still in flight after %.0f s of drain; exiting", self.options.drain_s)
        # Tearing down an interpreter that holds torch takes seconds and saves nothing.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("Handling signal: %s", signal.Signals(signum).name.removeprefix("SIG").lower())
        self._stop.set()

    @staticmethod
    def _not_ready(_method: str, _path: str, _body: bytes) -> HttpReply:
        raise AssertionError("no request is accepted before the service exists")
