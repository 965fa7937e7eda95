"""gunicorn for the gateway: gthread workers (blocking invokes and SSE streams hold a thread each).

The configuration is built from :class:`~faas_llm.settings.Settings` (no gunicorn config file
is read), and each worker builds its own app after the fork, so no Redis connection is shared
between processes. The workers' Prometheus metrics live in one multiprocess directory, emptied
at start and named in the environment before a worker imports prometheus_client.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from faas_llm.settings import Settings

SHM = "/dev/shm"


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    # gthread workers heartbeat from their main loop, so a thread that waits 60 s for a blocking
    # invoke or streams for minutes does not get the worker killed; ``timeout`` only catches a
    # worker whose main loop is stuck.
    return {
        "bind": f"{settings.gateway_host}:{settings.gateway_port}",
        "workers": settings.gateway_workers,
        "threads": settings.gateway_threads,
        "worker_class": "gthread",
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 75,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "errorlog": "-",
        "preload_app": False,
        "proc_name": "faas-llm-gateway",
        "limit_request_line": 8190,
        "control_socket_disable": True,  # gunicorn 25+: one ~/.gunicorn socket would clash across gateways
        # a worker's heartbeat touches its temp file on every turn of its loop: on tmpfs that is a
        # cheap syscall, on a journalled disk file system (the default /tmp here) a metadata write
        **({"worker_tmp_dir": SHM} if os.path.isdir(SHM) else {}),
    }


def multiprocess_metrics(settings: Settings) -> Settings:
    """An emptied metrics directory for this gateway's workers, in the environment they inherit;
    returns the settings the workers get (naming the directory)."""
    path = settings.gateway_metrics_path
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ.update(settings.prometheus_env())
    return settings.model_copy(update={"gateway_metrics_dir": path})


def _child_exit(settings: Settings, server: Any, worker: Any) -> None:
    from gateway.metrics import mark_worker_dead

    mark_worker_dead(settings.gateway_metrics_path, worker.pid)


class GatewayServer(BaseApplication):
    """``GatewayServer(settings).run()`` serves the gateway until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, overrides: dict[str, Any] | None = None) -> None:
        self.settings = multiprocess_metrics(settings)
        self.options = {**gunicorn_options(settings), "child_exit": functools.partial(_child_exit, self.settings),
                        **(overrides or {})}
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        from faas_llm.gcfreeze import freeze_long_lived
        from gateway.app import create_app

        app = create_app(self.settings)
        freeze_long_lived("a gateway worker's app")
        return app
