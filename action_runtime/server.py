"""The runtime process: one process (the model lives in it), the lean HTTP/1.1 server of
:mod:`action_runtime.httpserver` over the routes of :mod:`action_runtime.routes`.

- The port is bound first (a clash fails at once), then torch and transformers are imported
  (the prewarm) before the first connection is accepted; ``GET /health`` answers from then on.
- No request timeout: a long generation or stream is never killed for it.
- SIGTERM (or SIGINT) is a graceful stop: the listening socket closes (new connections are
  refused), in-flight runs get ``runtime_drain_s`` to finish, then the process exits 0
  (Knative's drain, OpenWhisk's container removal) without tearing down torch.
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

if TYPE_CHECKING:
    from action_runtime.routes import HttpReply

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


class RuntimeServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.options = server_options(settings)
        self._stop = threading.Event()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("Handling signal: %s", signal.Signals(signum).name.removeprefix("SIG").lower())
        self._stop.set()

    def run(self) -> None:
        from action_runtime.httpserver import HttpServer

        opts = self.options
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        server = HttpServer.listen(opts.host, opts.port, self._not_ready, opts.max_body, opts.threads)
        log.info("listening at http://%s:%d (pid %d)", opts.host, opts.port, os.getpid())

        from action_runtime.app import build_service
        from action_runtime.routes import RuntimeRoutes
        from faas_llm.gcfreeze import freeze_long_lived

        if self._stop.is_set():
            os._exit(0)
        service = build_service(self.settings)
        freeze_long_lived("the runtime after its prewarm")  # and again after /init (service.init)
        server.handle = RuntimeRoutes(service).handle
        threading.Thread(target=server.serve_forever, name="runtime-accept", daemon=True).start()
        while not self._stop.wait(1.0):
            pass
        drained = server.drain(opts.drain_s)
        if not drained:
            log.warning("runs still in flight after %.0f s of drain; exiting", opts.drain_s)
        try:
            service.close()
        except Exception:
            log.exception("closing the service failed")
        # Tearing down an interpreter that holds torch takes seconds and saves nothing.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    @staticmethod
    def _not_ready(_method: str, _path: str, _body: bytes) -> HttpReply:
        raise AssertionError("no request is accepted before the service exists")
