"""gunicorn, started from Python: one worker process (the model lives in it), gthread threads.

- No worker timeout (``timeout = 0``): a long generation or stream is never killed for it.
- SIGTERM is a graceful stop: no new connections, in-flight runs get ``runtime_drain_s`` to
  finish, then the worker is killed (Knative's drain, OpenWhisk's container removal).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from action_runtime.app import create_app
from faas_llm.settings import Settings


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "bind": f"{settings.runtime_host}:{settings.runtime_port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": settings.runtime_threads,
        "timeout": 0,
        "graceful_timeout": settings.runtime_drain_s,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "proc_name": "faas-llm-runtime",
    }


class RuntimeServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self.settings)
