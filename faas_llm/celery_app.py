"""The Celery app: background work off the request path (checkpoint prefetch, live migration, drains).

Built from the same :class:`~faas_llm.settings.Settings` as every service (an app factory;
no app exists at import time except through the module attribute ``app`` that
``celery -A faas_llm.celery_app`` looks up, created on first access from the environment)::

    celery -A faas_llm.celery_app worker -Q node.$FAAS_LLM_NODE_ID,celery -P solo --without-gossip --without-mingle
    faas-llm worker                         # the same, for this node (settings.node_id)

Broker and result backend are ``settings.redis_url``; JSON only (no pickle on the wire);
``acks_late`` with ``reject_on_worker_lost`` and a prefetch multiplier of 1, so a task whose
worker dies goes back to the queue instead of being lost. With a Redis broker an unacked
task of a worker killed with SIGKILL is restored only once ``visibility_timeout`` has passed,
by a live worker's periodic sweep; the timeout (``settings.celery_visibility_timeout_s``)
must outlast the longest task, and the sweep (``unacked_restore_interval``, throttle 1) runs
every ``settings.celery_restore_interval_s``.

Queues: ``node.<id>`` (:meth:`faas_llm.keys.Keys.node_queue`) for work that must run on one
node (prefetch into its cache agent), :data:`DEFAULT_QUEUE` for work any worker may do
(migrations, drains). Every worker also runs a periodic tick (a worker bootstep, one worker
at a time through a Redis lock): the rescuer (:mod:`faas_llm.tasks.rescue`) and the prefetch
policy (:mod:`faas_llm.prefetch_policy`).
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import Any, Literal

import redis
from celery import Celery, bootsteps

from faas_llm.keys import Keys
from faas_llm.settings import Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "celery"
TASK_PREFETCH = "faas_llm.prefetch"
TASK_MIGRATE = "faas_llm.migrate"
TASK_DRAIN = "faas_llm.drain"
TASK_TICK = "faas_llm.tick"


class FaasCelery(Celery):
    """A Celery app that carries its :class:`Settings` and a Redis client for the tasks."""

    faas_settings: Settings

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.faas_settings.key_prefix)

    @cached_property
    def redis(self) -> Any:
        return redis.Redis.from_url(self.faas_settings.redis_url, decode_responses=True, health_check_interval=30)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (pure; tested)."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": DEFAULT_QUEUE,
        "task_track_started": True,
        "result_expires": 86400,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "broker_transport_options": {
            "visibility_timeout": settings.celery_visibility_timeout_s,
            "unacked_restore_interval": settings.celery_restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": settings.celery_visibility_timeout_s},
        "worker_send_task_events": False,
    }


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
        from faas_llm.tasks.tick import run_tick

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
    settings = settings or get_settings()
    app = FaasCelery("faas_llm", set_as_current=False)
    app.faas_settings = settings
    app.conf.update(celery_config(settings))
    app.steps["worker"].add(TickStep)
    from faas_llm.tasks import register

    register(app)
    return app


def send_prefetch(app: FaasCelery, model: str, node: str, tier: Literal["dram", "ssd"] = "dram",
                  version: int | None = None) -> str:
    """Queue a prefetch of ``model`` into ``node``'s ``tier`` (on the node's own queue); the task id."""
    from faas_llm.model_status import ModelStatusStore
    from faas_llm.types import check_model_name

    check_model_name(model)
    result = app.send_task(TASK_PREFETCH, kwargs={"model": model, "node": node, "tier": tier, "version": version},
                           queue=Keys.node_queue(node))
    ModelStatusStore(app.redis, app.keys).queued(model, node, tier, result.id)
    return str(result.id)


def send_migrate(app: FaasCelery, activation_id: str, destination: str | None = None) -> str:
    """Queue a live migration of a running activation (to ``destination``, or the best other node)."""
    result = app.send_task(TASK_MIGRATE, kwargs={"activation_id": activation_id, "destination": destination},
                           queue=DEFAULT_QUEUE)
    return str(result.id)


def send_drain(app: FaasCelery, node: str) -> str:
    result = app.send_task(TASK_DRAIN, kwargs={"node": node}, queue=DEFAULT_QUEUE)
    return str(result.id)


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
    # `celery -A faas_llm.celery_app` looks up `app` (or `celery`): build it on first access.
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_celery()
            _app.set_current()
            _app.set_default()
        return _app
    raise AttributeError(name)
