"""The Celery contract: task names, queues, configuration, and the senders the other processes use.

Background work runs in the ``worker`` process (:mod:`worker.app` registers the tasks); the
invoker and the CLI only *send* tasks, by name, through the app :func:`create_sender` builds
from the same configuration, so none of them imports the worker. Broker and result backend are
``settings.redis_url``; JSON only (no pickle on the wire); ``acks_late`` with
``reject_on_worker_lost`` and a prefetch multiplier of 1, so a task whose worker dies goes back
to the queue instead of being lost. With a Redis broker an unacked task of a worker killed with
SIGKILL is restored only once ``visibility_timeout`` has passed, by a live worker's periodic
sweep; the timeout (``settings.celery_visibility_timeout_s``) must outlast the longest task, and
the sweep (``unacked_restore_interval``, throttle 1) runs every ``settings.celery_restore_interval_s``.

Queues: ``node.<id>`` (:meth:`faas_llm.keys.Keys.node_queue`) for work that must run on one
node (prefetch into its cache agent), :data:`DEFAULT_QUEUE` for work any worker may do
(migrations, drains).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import redis
from celery import Celery

from faas_llm.keys import Keys
from faas_llm.model_status import ModelStatusStore
from faas_llm.settings import Settings, get_settings
from faas_llm.types import check_model_name

DEFAULT_QUEUE = "celery"
TASK_PREFETCH = "faas_llm.prefetch"
TASK_MIGRATE = "faas_llm.migrate"
TASK_DRAIN = "faas_llm.drain"
TASK_TICK = "faas_llm.tick"


class FaasCelery(Celery):
    """A Celery app that carries its :class:`Settings` and a Redis client (for senders and tasks)."""

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


def create_sender(settings: Settings | None = None) -> FaasCelery:
    """A Celery app that sends faas-llm's tasks by name and reads their results (no task registered)."""
    settings = settings or get_settings()
    app = FaasCelery("faas_llm", set_as_current=False)
    app.faas_settings = settings
    app.conf.update(celery_config(settings))
    return app


def send_prefetch(app: FaasCelery, model: str, node: str, tier: Literal["dram", "ssd"] = "dram",
                  version: int | None = None) -> str:
    """Queue a prefetch of ``model`` into ``node``'s ``tier`` (on the node's own queue); the task id."""
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
