"""gunicorn, started from Python: one worker process (the model lives in it), gthread threads.

- No worker timeout (``timeout = 0``): a long generation or stream is never killed for it.
- SIGTERM is a graceful stop: no new connections, in-flight runs get ``runtime_drain_s`` to
  finish, then the worker is killed (Knative's drain, OpenWhisk's container removal).
- The master process stays light (no torch); the worker imports torch and transformers when
  it boots, before it accepts ``/init`` (that is the prewarm).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from faas_llm.settings import Settings


def exit_after_drain(_arbiter: Any, worker: Any) -> None:
    """gunicorn ``worker_exit`` hook: a worker that drained on a graceful stop leaves at once.

    Tearing down an interpreter that holds torch takes seconds and saves nothing (the model is
    in memory only); a worker that failed (still ``alive``) or never booted exits the usual way,
    so the master still sees its status.
    """
    if worker.booted and not worker.alive:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "bind": f"{settings.runtime_host}:{settings.runtime_port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": settings.runtime_threads,
        "timeout": 0,
        "graceful_timeout": math.ceil(settings.runtime_drain_s),  # gunicorn takes whole seconds
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "faas-llm-runtime",
        "control_socket_disable": True,  # gunicorn 25+: one shared ~/.gunicorn socket would clash across runtimes
        "worker_exit": exit_after_drain,
    }


class RuntimeServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from action_runtime.app import create_app  # in the worker: the master never imports torch

        return create_app(self.settings)
