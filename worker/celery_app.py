"""The worker process's Celery app: faas-llm's tasks registered, and the periodic tick.

Built from the same :class:`~faas_llm.settings.Settings` as every service (an app factory; no app
exists at import time except through the module attribute ``app`` that
``celery -A worker.celery_app`` looks up, created on first access from the environment)::

    celery -A worker.celery_app worker -Q node.$FAAS_LLM_NODE_ID,celery -P solo --without-gossip --without-mingle
    faas-llm worker                         # the same, for this node (settings.node_id)

The configuration, task names and queues are the contract in :mod:`faas_llm.jobs` (the invoker
and the CLI send tasks through it without importing this package). Every worker also runs a
periodic tick (a worker bootstep, one worker at a time through a Redis lock): the rescuer
(:mod:`worker.tasks.rescue`) and the prefetch policy (:mod:`faas_llm.prefetch_policy`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from faas_llm.jobs import DEFAULT_QUEUE, FaasCelery, create_sender
from faas_llm.keys import Keys
from faas_llm.settings import Settings, get_settings

log = logging.getLogger(__name__)


class TickStep(bootsteps.StartStopStep):
    """A thread in every worker: each ``celery_tick_s``, run the periodic jobs (one worker at a time)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        app: FaasCelery = worker.app
        self._thread = threading.Thread(target=self._loop, args=(app,), name="faas-tick", daemon=True)
        self._thread.start()

    def _loop(self, app: FaasCelery) -> None:
        from worker.tasks.tick import run_tick

        while not self._stop.wait(app.faas_settings.celery_tick_s):
            try:
                run_tick(app)
            except Exception:
                log.exception("periodic tick failed")

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def create_celery(settings: Settings | None = None) -> FaasCelery:
    """A Celery app for ``settings`` (default: the environment's) with faas-llm's tasks registered."""
    app = create_sender(settings or get_settings())
    app.steps["worker"].add(TickStep)
    from worker.tasks import register

    register(app)
    return app


def worker_argv(settings: Settings, extra: list[str] | None = None) -> list[str]:
    """``celery worker`` arguments for this node: its own queue and the default one."""
    return [
        "worker", "-Q", f"{Keys.node_queue(settings.node_id)},{DEFAULT_QUEUE}",
        "-n", f"{settings.node_id}@%h", "-P", settings.celery_pool, "-c", str(settings.celery_concurrency),
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", settings.log_level,
        *(extra or []),
    ]


_app: FaasCelery | None = None


def __getattr__(name: str) -> Any:
    # `celery -A worker.celery_app` looks up `app` (or `celery`): build it on first access.
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_celery()
            _app.set_current()
            _app.set_default()
        return _app
    raise AttributeError(name)
