"""``faas_llm.prefetch(model, node, tier)``: fill this node's DRAM or SSD tier ahead of demand.

Runs on the node's own queue (``node.<id>``) and asks the local cache agent
(:meth:`faas_llm.cache_client.CacheClient.prefetch` with ``wait``), which loads from the
registry (or from SSD into DRAM) once, however many prefetches ask: a redelivered task finds
the checkpoint already there and returns at once. Progress and outcome go to
``keys.model_status(model)`` (:mod:`faas_llm.model_status`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from faas_llm.cache_client import CacheClient
from faas_llm.errors import CacheAgentError, ConfigError, FaasLLMError
from faas_llm.model_status import ModelStatusStore
from faas_llm.types import check_model_name

log = logging.getLogger(__name__)
RETRY_DELAY_S = 5
MAX_RETRIES = 3


def prefetch_task(task: Any, model: str, node: str, tier: Literal["dram", "ssd"] = "dram",
                  version: int | None = None) -> dict[str, Any]:
    app = task.app
    settings = app.faas_settings
    status = ModelStatusStore(app.redis, app.keys)
    task_id = str(task.request.id)
    if tier not in ("dram", "ssd"):
        raise ConfigError(f"prefetch tier must be dram or ssd, not {tier!r}")
    check_model_name(model)
    if node != settings.node_id:
        # only a misrouted message gets here (queues are per node): say so rather than fill the wrong node
        message = f"prefetch for node {node} reached the worker of node {settings.node_id}"
        status.failed(model, node, tier, message)
        raise ConfigError(message)
    status.running(model, node, tier, task_id)
    started = time.monotonic()
    try:
        reply = CacheClient(settings, heartbeat=False).prefetch(model, tier, version, wait=True)
    except CacheAgentError as exc:
        status.failed(model, node, tier, exc.message)
        if task.request.retries < MAX_RETRIES:  # the agent may be restarting
            raise task.retry(countdown=RETRY_DELAY_S, max_retries=MAX_RETRIES) from None
        raise
    except FaasLLMError as exc:
        status.failed(model, node, tier, exc.message)
        raise
    done = status.done(model, node, tier, reply.version, started)
    log.info("prefetched %s@%s into %s of %s in %.2f s (attempt %d)", model, reply.version, tier, node,
             done.seconds or 0.0, done.attempts)
    return {"model": model, "node": node, "tier": tier, "version": reply.version, "seconds": done.seconds,
            "attempts": done.attempts}
