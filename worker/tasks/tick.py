"""The periodic jobs of the Celery workers: the rescuer, then the prefetch policy.

Every worker runs :func:`run_tick` each ``settings.celery_tick_s`` (a worker bootstep, see
:mod:`worker.celery_app`); a Redis lock (``keys.celery_lock("tick")``) lets one worker in
the cluster do it per period. ``faas_llm.tick`` runs it on demand.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from faas_llm.model_status import ModelStatusStore
from faas_llm.popularity import recent_counts
from faas_llm.prefetch_policy import Plan, PolicyConfig, plan_prefetch
from faas_llm.types import Action, now_ms
from worker.tasks.inventories import node_caches
from worker.tasks.rescue import live_nodes, rescue_dead_queues

if TYPE_CHECKING:
    from faas_llm.jobs import FaasCelery

log = logging.getLogger(__name__)
#: a queued/running prefetch younger than this is not asked for again
PENDING_GRACE_MS = 600_000


def run_tick(app: FaasCelery, *, force: bool = False) -> dict[str, Any] | None:
    """Run the periodic jobs unless another worker holds the lock (``force``: run regardless)."""
    settings = app.faas_settings
    lock = app.keys.celery_lock("tick")
    token = secrets.token_hex(8)
    ttl_ms = max(1000, int(settings.celery_tick_s * 1000 * 0.9))
    if not force and not app.redis.set(lock, token, nx=True, px=ttl_ms):
        return None
    rerouted = rescue_dead_queues(app)
    plan = apply_prefetch_policy(app)
    return {"rerouted": rerouted, "prefetches": [p.__dict__ for p in plan.prefetches], "cold": list(plan.cold)}


def tick_task(task: Any) -> dict[str, Any] | None:
    return run_tick(task.app, force=True)


def pinned_models(app: FaasCelery) -> dict[str, int]:
    """Models of actions with ``min_instances > 0`` (the largest pin per model)."""
    r, keys = app.redis, app.keys
    pins: dict[str, int] = {}
    for ns in r.smembers(keys.namespaces()):
        names = r.zrange(keys.actions_index(ns), 0, -1)
        raws = r.mget([keys.action(ns, n) for n in names]) if names else []
        for raw in raws:
            if not raw:
                continue
            try:
                action = Action.model_validate_json(raw)
            except ValidationError:
                continue
            if action.scaling.min_instances > 0:
                model = action.exec.model
                pins[model] = max(pins.get(model, 0), action.scaling.min_instances)
    return pins


def apply_prefetch_policy(app: FaasCelery) -> Plan:
    from faas_llm.jobs import send_prefetch

    settings = app.faas_settings
    nodes = live_nodes(app)
    counts = recent_counts(app.redis, app.keys, settings.prefetch_window_s)
    config = PolicyConfig(max_replicas=settings.prefetch_max_replicas)
    plan = plan_prefetch(counts, node_caches(app, nodes), config, pinned_models(app))
    status = ModelStatusStore(app.redis, app.keys)
    now = now_ms()
    for p in plan.prefetches:
        current = status.get(p.model).get(p.node)
        if current is not None and current.tier == p.tier and current.state in ("queued", "running") \
                and now - (current.queued_ms or 0) < PENDING_GRACE_MS:
            continue
        send_prefetch(app, p.model, p.node, p.tier)
        log.info("prefetch policy: %s -> %s (%s)", p.model, p.node, p.tier)
    app.redis.set(app.keys.models_kept(), _plan_json(plan), ex=max(60, int(settings.celery_tick_s * 10)))
    return plan


def _plan_json(plan: Plan) -> str:
    import json

    return json.dumps({"kept": {m: {"tier": t, "replicas": n} for m, (t, n) in plan.kept.items()},
                       "cold": list(plan.cold)})
