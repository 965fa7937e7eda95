"""The invoker's transitions of an activation's lifecycle, each in one method of :class:`RunLifecycle`.

The states and the keys behind them are drawn in :mod:`faas_llm.activations`
(:class:`~faas_llm.activations.ActivationState`); here is every move an invoker makes:

- :meth:`RunLifecycle.claim` QUEUED -> RUNNING, one script (:data:`CLAIM_SCRIPT`): a record stored
  already (a redelivery of a finished activation) -> the entry is acked and deleted, nothing runs; the
  run claim (``SET NX PX claim_idle_ms``) held by another consumer -> nothing changes (the entry stays
  pending; cleanup revisits it); else the claim is this consumer's and, unless the deadline passed, the
  run is registered (``keys.activation_running`` = :class:`faas_llm.migration.RunningRun` JSON,
  ``keys.node_running``) and the model's popularity counted (:func:`faas_llm.popularity.record_invocation`'s
  writes);
- :meth:`RunLifecycle.finish` RUNNING -> DONE, one script
  (:meth:`faas_llm.activations.ActivationStore.complete_and_ack`): the record (``SET NX``), then the ack +
  delete of the entry, the claim released, the run unregistered; the entry is never acked without its record;
- :meth:`RunLifecycle.fail` QUEUED / RUNNING -> DONE without an answer (deadline passed in the queue, an
  action that cannot start, a run lost too often): a failure record and the ack in the same script;
- :meth:`RunLifecycle.release` RUNNING -> QUEUED: this consumer gives a run up (it is stopping); the entry
  stays pending and :meth:`RunLifecycle.cleanup` puts it back;
- :meth:`RunLifecycle.hand_back`: an entry delivered to a container that can no longer take it goes back
  to the queue's tail, same attempt;
- :meth:`RunLifecycle.cleanup` (python-rq's ``StartedJobRegistry.cleanup``): entries idle at least
  ``claim_idle_ms`` (live consumers renew theirs, :mod:`invoker.heartbeat`) are taken (``XAUTOCLAIM``) and
  settled: finished -> acked; claimed by a live consumer -> left; past the deadline -> a timeout record;
  tried :data:`MAX_ATTEMPTS` times -> a "whisk internal error" record; else back on the queue, attempt + 1.

A warm run costs three round trips: ``XREADGROUP``, the claim script, the completion script.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faas_llm.activations import ActivationStore, ScriptRunner
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.types import ActivationRecord, Invocation, Limits, now_ms
from invoker import streams
from invoker.cluster import ActionDefinitions
from invoker.metrics import InvokerMetrics
from invoker.records import failure_record, timeout_message

log = logging.getLogger(__name__)
#: a run lost by its invoker this many times gets a "whisk internal error" record instead of another try
MAX_ATTEMPTS = 3

#: KEYS: record, claim, stream, running, node running set, popularity of the minute, popularity (all time)
#: ARGV: consumer, claim ms, group, entry id, register ('1'/'0'), running JSON, running ttl ms, activation id,
#: deadline ms, model, popularity window ttl s.
#: Returns {1} finished (acked, deleted), {0, owner} held by another consumer, {2} run it.
CLAIM_SCRIPT = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('xack', KEYS[3], ARGV[3], ARGV[4])
  redis.call('xdel', KEYS[3], ARGV[4])
  return {1}
end
if not redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local owner = redis.call('get', KEYS[2])
  if owner ~= ARGV[1] then
    return {0, owner or ''}
  end
end
if ARGV[5] == '1' then
  redis.call('set', KEYS[4], ARGV[6], 'PX', ARGV[7])
  redis.call('zadd', KEYS[5], ARGV[9], ARGV[8])
  redis.call('zincrby', KEYS[6], 1, ARGV[10])
  redis.call('expire', KEYS[6], ARGV[11])
  redis.call('zincrby', KEYS[7], 1, ARGV[10])
end
return {2}
"""

#: KEYS: claim, running, node running sets... ARGV: consumer, activation id.
#: The claim goes only if this consumer holds it; the run's registration goes.
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
end
redis.call('del', KEYS[2])
for i = 3, #KEYS do
  redis.call('zrem', KEYS[i], ARGV[2])
end
return 1
"""

FINISHED, HELD, RUN = 1, 0, 2


@dataclass(frozen=True)
class Claim:
    """What :meth:`RunLifecycle.claim` found: :data:`FINISHED`, :data:`HELD` (by ``owner``) or :data:`RUN`."""

    outcome: int
    owner: str | None = None


def running_json(run: dict[str, Any]) -> str:
    """The registry value: ``RunningRun(**run).model_dump_json()``'s text, without pydantic (the invoker made
    every field itself: strings and ints, in :class:`faas_llm.migration.RunningRun`'s field order)."""
    return json.dumps(run, separators=(",", ":"), ensure_ascii=False)


class RunLifecycle:
    """One consumer's transitions of the activations on the action queues (see the module docstring)."""

    def __init__(self, settings: Settings, r: Any, keys: Keys, store: ActivationStore, actions: ActionDefinitions,
                 consumer: str, *, run_script: ScriptRunner | None = None) -> None:
        """``run_script``: how the claim script is sent (default: through ``r``; the invoker sends it on its own
        per-thread connection, :mod:`faas_llm.thread_redis`)."""
        self.settings, self.r, self.keys, self.store = settings, r, keys, store
        self.actions, self.consumer = actions, consumer
        self.group = keys.consumer_group()
        self.claim_ms = settings.claim_idle_ms
        self.popularity_ttl_s = settings.prefetch_window_s + 120  # as faas_llm.popularity.record_invocation
        self._claim = r.register_script(CLAIM_SCRIPT)
        self._release = r.register_script(RELEASE_SCRIPT)
        self._run: ScriptRunner = run_script or (lambda script, keys, args: script(keys=keys, args=args))

    # --- one entry -------------------------------------------------------------------------
    def claim(self, activation_id: str, queue: str, entry_id: str, run: dict[str, Any] | None) -> Claim:
        """QUEUED -> RUNNING: check the record, take the claim and (``run``: the RunningRun fields, ``None``:
        its deadline passed, do not register) register the run, atomically."""
        k = self.keys
        at = now_ms()
        if run is not None:
            deadline = int(run["deadline_ms"])
            register = ("1", running_json(run), max(1000, deadline - at + 60_000), deadline, run["model"])
        else:
            register = ("0", "", 0, 0, "")
        flag, body, ttl_ms, score, model = register
        reply = self._run(
            self._claim,
            [k.activation(activation_id), k.activation_claim(activation_id), queue,
             k.activation_running(activation_id), k.node_running(str(run["node"]) if run else "-"),
             k.model_popularity_window(at // 60_000), k.model_popularity()],
            [self.consumer, self.claim_ms, self.group, entry_id, flag, body, ttl_ms, activation_id, score,
             model, self.popularity_ttl_s])
        owner = reply[1] if len(reply) > 1 else None
        if isinstance(owner, bytes):
            owner = owner.decode()
        return Claim(int(reply[0]), owner or None)

    def finish(self, record: ActivationRecord, queue: str, entry_id: str, ran_on: Sequence[str] = ()) -> bool:
        """RUNNING -> DONE: the record (exactly once), the ack, the claim and the run's registration on
        ``ran_on`` released, in one script; False when a record was stored already (this one is dropped)."""
        claim = self.keys.activation_claim(record.activationId)
        return self.store.complete_and_ack(record, queue, self.group, entry_id, claim, self.consumer, ran_on)

    def fail(self, record: ActivationRecord, queue: str, entry_id: str) -> bool:
        """-> DONE with ``record`` (a failure: the activation did not run to an answer), the entry acked."""
        return self.finish(record, queue, entry_id)

    def release(self, activation_id: str, ran_on: Sequence[str]) -> None:
        """RUNNING -> QUEUED: give up a run (this invoker is stopping): the claim (if still ours) and the run's
        registration go; the entry stays pending, so :meth:`cleanup` puts it back for another invoker."""
        k = self.keys
        self._run(self._release,
                  [k.activation_claim(activation_id), k.activation_running(activation_id),
                   *(k.node_running(n) for n in dict.fromkeys(ran_on))],
                  [self.consumer, activation_id])

    def hand_back(self, queue: str, entry_id: str, fields: Mapping[Any, Any]) -> None:
        """An entry this consumer read but cannot run (its container went): back to the tail, same attempt."""
        streams.requeue(self.r, queue, self.group, entry_id, fields, streams.attempt_of(fields))

    def drop(self, queue: str, entry_id: str, reason: str) -> None:
        """An entry that holds no invocation: acked and deleted (nothing can run it)."""
        log.error("dropping a malformed entry %s of %s: %s", entry_id, queue, reason)
        streams.ack_delete(self.r, queue, self.group, entry_id)

    # --- entries nobody runs ---------------------------------------------------------------------
    def timeout_record(self, inv: Invocation, limits: Limits | None) -> ActivationRecord:
        """The record of an activation whose deadline passed before it ran."""
        message = timeout_message(limits) if limits else "The action exceeded its time limit."
        return failure_record(inv, ActivationStatus.DEVELOPER_ERROR, message, self.settings.node_id, now_ms(),
                              timed_out=True, limits=limits)

    def cleanup(self, metrics: InvokerMetrics | None = None) -> dict[str, int]:
        """Settle every action queue's entries whose consumer stopped renewing them; counts by outcome."""
        counts = {"done": 0, "held": 0, "timeout": 0, "failed": 0, "requeued": 0, "dropped": 0}
        for queue in sorted(self.r.smembers(self.keys.queues_index())):
            if not self.r.exists(queue):
                continue
            streams.ensure_group(self.r, queue, self.group)
            for entry_id, fields in streams.autoclaim(self.r, queue, self.group, self.consumer, self.claim_ms):
                outcome = self._settle(queue, entry_id, fields)
                counts[outcome] += 1
                if metrics is not None and outcome != "held":
                    metrics.reclaimed.labels(outcome=outcome).inc()
        return counts

    def _settle(self, queue: str, entry_id: str, fields: Mapping[Any, Any] | None) -> str:
        if fields is None:  # deleted while pending
            self.r.xack(queue, self.group, entry_id)
            return "dropped"
        try:
            inv = ActivationStore.decode_message(fields)
        except ValueError:
            streams.ack_delete(self.r, queue, self.group, entry_id)
            return "dropped"
        if self.store.get(inv.activation_id) is not None:
            streams.ack_delete(self.r, queue, self.group, entry_id)
            return "done"
        owner = self.r.get(self.keys.activation_claim(inv.activation_id))
        if owner is not None and owner != self.consumer:
            return "held"
        attempt = streams.attempt_of(fields)
        if now_ms() >= inv.deadline_ms:
            action = self.actions.get(inv.namespace, inv.action)
            self.fail(self.timeout_record(inv, action.limits if action else None), queue, entry_id)
            return "timeout"
        if attempt >= MAX_ATTEMPTS:
            message = f"The activation was lost by its invoker {attempt} times; it was not run to completion."
            self.fail(failure_record(inv, ActivationStatus.INTERNAL_ERROR, message, self.settings.node_id, now_ms()),
                      queue, entry_id)
            return "failed"
        log.info("re-queueing %s of %s (attempt %d)", inv.activation_id, queue, attempt + 1)
        streams.requeue(self.r, queue, self.group, entry_id, fields, attempt + 1)
        return "requeued"

    def fail_backlog(self, namespace: str, action: str, status: ActivationStatus, message: str, limit: int) -> int:
        """Take up to ``limit`` undelivered invocations of an action and fail each (``status``, ``message``)."""
        queue = self.keys.action_queue(namespace, action)
        streams.ensure_group(self.r, queue, self.group)
        resp = self.r.xreadgroup(self.group, self.consumer, {queue: ">"}, count=max(1, limit))
        failed = 0
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                try:
                    inv = ActivationStore.decode_message(fields)
                except ValueError as exc:
                    self.drop(queue, entry_id, str(exc))
                    continue
                record = failure_record(inv, status, message, self.settings.node_id, now_ms())
                failed += self.fail(record, queue, entry_id)
        return failed

    def expire_backlog(self, namespace: str, action: str, limits: Limits | None = None, most: int = 100) -> int:
        """Fail with a timeout record the oldest undelivered invocations whose deadline passed."""
        queue = self.keys.action_queue(namespace, action)
        streams.ensure_group(self.r, queue, self.group)
        expired = 0
        for _ in range(most):
            head = streams.head_undelivered(self.r, queue, self.group)
            if head is None:
                break
            try:
                inv: Invocation | None = ActivationStore.decode_message(head[1])
            except ValueError:
                inv = None
            if inv is not None and now_ms() < inv.deadline_ms:
                break
            resp = self.r.xreadgroup(self.group, self.consumer, {queue: ">"}, count=1)
            taken = [(eid, f) for _s, entries in resp or [] for eid, f in entries]
            if not taken:
                break
            entry_id, fields = taken[0]
            if entry_id != head[0]:  # someone took the head meanwhile: hand this one back, stop
                self.hand_back(queue, entry_id, fields)
                break
            if inv is None:
                self.drop(queue, entry_id, "no invocation")
                continue
            self.fail(self.timeout_record(inv, limits or Limits()), queue, entry_id)
            expired += 1
        return expired
