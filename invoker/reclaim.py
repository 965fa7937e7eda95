"""Reclaiming invocations held by dead consumers (a killed invoker, a lost connection).

Every invoker sweeps every action queue: ``XAUTOCLAIM`` takes entries idle for at least
``settings.claim_idle_ms`` (live consumers renew theirs, see :mod:`invoker.dispatch`). For each:

- its record is stored already -> ack and drop (it finished; only the ack was lost);
- another consumer still holds its run claim -> leave it (that consumer is alive and will
  take the entry back with its next lease renewal);
- its deadline passed -> a timeout record (it failed clearly, it is not lost);
- it was already tried ``MAX_ATTEMPTS`` times -> a "whisk internal error" record;
- else it goes back to the tail of the queue with ``attempt + 1`` and runs wherever a warm
  container (or a newly placed one) takes it.
"""

from __future__ import annotations

import logging
from typing import Any

from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.types import now_ms
from invoker import streams
from invoker.cluster import ActionCache
from invoker.metrics import InvokerMetrics
from invoker.records import failure_record, timeout_message

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


def sweep(settings: Settings, r: Any, keys: Keys, store: ActivationStore, actions: ActionCache,
          metrics: InvokerMetrics, consumer: str) -> dict[str, int]:
    """One pass over every action queue; returns counts by outcome."""
    group = keys.consumer_group()
    counts = {"done": 0, "held": 0, "timeout": 0, "failed": 0, "requeued": 0, "dropped": 0}
    for queue in sorted(r.smembers(keys.queues_index())):
        if not r.exists(queue):
            continue
        streams.ensure_group(r, queue, group)
        for entry_id, fields in streams.autoclaim(r, queue, group, consumer, settings.claim_idle_ms):
            outcome = _settle(settings, r, keys, store, actions, queue, group, consumer, entry_id, fields)
            counts[outcome] += 1
            if outcome != "held":
                metrics.reclaimed.labels(outcome=outcome).inc()
    return counts


def _settle(settings: Settings, r: Any, keys: Keys, store: ActivationStore, actions: ActionCache, queue: str,
            group: str, consumer: str, entry_id: str, fields: Any) -> str:
    if fields is None:  # deleted while pending
        r.xack(queue, group, entry_id)
        return "dropped"
    try:
        inv = ActivationStore.decode_message(fields)
    except ValueError:
        streams.ack_delete(r, queue, group, entry_id)
        return "dropped"
    if store.get(inv.activation_id) is not None:
        streams.ack_delete(r, queue, group, entry_id)
        return "done"
    owner = r.get(keys.activation_claim(inv.activation_id))
    if owner is not None and owner != consumer:
        return "held"
    attempt = streams.attempt_of(fields)
    action = actions.get(inv.namespace, inv.action)
    node = settings.node_id
    if now_ms() >= inv.deadline_ms:
        limits = action.limits if action else None
        message = timeout_message(limits) if limits else "The action exceeded its time limit."
        store.complete(failure_record(inv, ActivationStatus.DEVELOPER_ERROR, message, node, now_ms(),
                                      timed_out=True, limits=limits))
        streams.ack_delete(r, queue, group, entry_id)
        return "timeout"
    if attempt >= MAX_ATTEMPTS:
        message = f"The activation was lost by its invoker {attempt} times; it was not run to completion."
        store.complete(failure_record(inv, ActivationStatus.INTERNAL_ERROR, message, node, now_ms()))
        streams.ack_delete(r, queue, group, entry_id)
        return "failed"
    log.info("re-queueing %s of %s (attempt %d)", inv.activation_id, queue, attempt + 1)
    streams.requeue(r, queue, group, entry_id, fields, attempt + 1)
    return "requeued"
