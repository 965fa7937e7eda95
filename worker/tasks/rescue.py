"""The rescuer: re-route the Celery queue of a node that stays dead.

A node is alive while its report (``keys.node(id)``, written by its invoker with a TTL) exists.
A queue ``node.<id>`` holding messages while its node has no report is noted in
``keys.celery_dead_nodes()`` with the time first seen; once that is older than
``settings.celery_rescue_after_s`` the node is dead and each waiting message is taken off its
queue and sent again: a prefetch goes to a live node that lacks the checkpoint (the model
status of the dead node says ``rerouted``), anything else to the default queue. A node that
reports again is forgotten. Messages a dead worker had taken but not acknowledged come back to
the queue first (the broker's visibility timeout), then are re-routed the same way.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faas_llm.keys import Keys
from faas_llm.types import now_ms
from worker.tasks.inventories import node_caches

if TYPE_CHECKING:
    from faas_llm.jobs import FaasCelery

log = logging.getLogger(__name__)
QUEUE_PREFIX = Keys.node_queue("")
#: kombu's separator between a queue's name and its priority in Redis list names
PRIORITY_SEP = "\x06\x16"


@dataclass(frozen=True)
class QueuedTask:
    name: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]


def decode_message(raw: str | bytes) -> QueuedTask:
    """The task in a kombu message as stored in a Redis list (protocol 2, JSON body)."""
    message = json.loads(raw)
    headers = message.get("headers") or {}
    body = message["body"]
    if (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    if message.get("content-type") != "application/json":
        raise ValueError(f"not a JSON task message: {message.get('content-type')}")
    args, kwargs, _embed = json.loads(body)
    return QueuedTask(str(headers.get("task")), str(headers.get("id")), list(args), dict(kwargs))


def live_nodes(app: FaasCelery) -> list[str]:
    """Nodes with a live report, sorted."""
    r, keys = app.redis, app.keys
    names = sorted(set(r.zrange(keys.nodes_index(), 0, -1)))
    if not names:
        return []
    raws = r.mget([keys.node(n) for n in names])
    return [n for n, raw in zip(names, raws, strict=True) if raw]


def node_queues(app: FaasCelery) -> dict[str, list[str]]:
    """node id -> the Redis lists of its Celery queue (with priority variants) that hold messages."""
    out: dict[str, list[str]] = {}
    for key in app.redis.scan_iter(match=f"{QUEUE_PREFIX}*", count=1000):
        if app.redis.type(key) != "list":
            continue
        node = key[len(QUEUE_PREFIX):].split(PRIORITY_SEP, 1)[0]
        if node:
            out.setdefault(node, []).append(key)
    return out


def rescue_dead_queues(app: FaasCelery, at_ms: int | None = None) -> list[dict[str, Any]]:
    """Re-route the queues of nodes dead for long enough; returns what moved where."""
    r, keys, settings = app.redis, app.keys, app.faas_settings
    now = now_ms() if at_ms is None else at_ms
    live = live_nodes(app)
    dead_key = keys.celery_dead_nodes()
    if live:
        r.hdel(dead_key, *live)
    moved: list[dict[str, Any]] = []
    for node, lists in sorted(node_queues(app).items()):
        if node in live:
            continue
        r.hsetnx(dead_key, node, now)
        since = int(r.hget(dead_key, node) or now)
        if now - since < settings.celery_rescue_after_s * 1000 or not live:
            continue
        for queue in lists:
            while (raw := r.rpop(queue)) is not None:
                moved.append(_reroute(app, node, raw, live))
    return moved


def _reroute(app: FaasCelery, dead: str, raw: str, live: list[str]) -> dict[str, Any]:
    from faas_llm.jobs import DEFAULT_QUEUE, TASK_PREFETCH, send_prefetch
    from faas_llm.model_status import ModelStatusStore

    try:
        task = decode_message(raw)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("rescuer: dropping an unreadable message of dead node %s: %s", dead, exc)
        return {"from": dead, "dropped": True}
    if task.name == TASK_PREFETCH:
        model, tier = str(task.kwargs["model"]), task.kwargs.get("tier", "dram")
        caches = node_caches(app, live)
        lacking = [c.node for c in caches if not c.holds(model, tier)]
        target = (lacking or live)[0]
        task_id = send_prefetch(app, model, target, tier, task.kwargs.get("version"))
        ModelStatusStore(app.redis, app.keys).rerouted(model, dead, tier, target)
        log.warning("rescuer: prefetch of %s for dead node %s moved to %s (%s)", model, dead, target, task_id)
        return {"from": dead, "to": target, "task": task.name, "model": model, "task_id": task_id}
    result = app.send_task(task.name, args=task.args, kwargs=task.kwargs, queue=DEFAULT_QUEUE)
    log.warning("rescuer: %s %s of dead node %s moved to the default queue", task.name, task.task_id, dead)
    return {"from": dead, "to": DEFAULT_QUEUE, "task": task.name, "task_id": str(result.id)}
