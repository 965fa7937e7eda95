"""Dispatch: warm containers pull the next invocation of their action and run it, at least once.

Each warm container runs ``limits.concurrency`` worker threads; each blocks on ``XREADGROUP``
of its action's queue (one consumer group for all invokers; this invoker's consumer name).
For an entry:

1. a record already stored (a redelivery of a finished activation): ack and drop it;
2. take the activation's run claim (``keys.activation_claim``, ``SET NX`` with a lease); if
   another live consumer holds it, leave the entry pending (the reclaimer revisits it);
   (with 1. and the run's registration, one script: :mod:`invoker.claims`);
3. run it (``POST /run``; tokens of a streamed run go to the activation's token stream);
4. store the record (exactly once: ``SET NX``), then ``XACK`` + ``XDEL`` the entry, drop the
   claim and unregister the run, in one script (:meth:`ActivationStore.complete_and_ack`).

While a run is in flight the heartbeat renews its lease (``XCLAIM ... JUSTID`` resets the
entry's idle time; the claim key's TTL is extended), so only entries of dead consumers
reach ``settings.claim_idle_ms`` idle and get reclaimed (:mod:`invoker.reclaim`).
A runtime that dies mid-run yields an "action developer error" record and is replaced; a
run past its deadline yields a timeout record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from faas_llm import migration, slot_lease
from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus, DeveloperError
from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import ActivationRecord, Invocation, Limits, LoadTier, now_ms
from invoker import claims, replay, runtime_client, streams
from invoker.cluster import ActionCache
from invoker.container import Container
from invoker.handoff import Handoff, continue_if_migrated
from invoker.metrics import InvokerMetrics
from invoker.migration_slots import LeasedSlots, LeaseSet
from invoker.pool import ContainerPool
from invoker.records import RunFacts, build_record, failure_record, runtime_ttft, timeout_message

log = logging.getLogger(__name__)
BLOCK_MS = 500


@dataclass(frozen=True)
class InFlight:
    queue: str
    entry_id: str
    activation_id: str


def _max_tokens(params: Mapping[str, Any]) -> int:
    """The run's token budget as the caller gave it (the runtime's default 16 otherwise; 0: not a number)."""
    value = params.get("max_tokens", 16)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class SourceSlot:
    """The run slot a worker thread took on its container; released once, possibly early (a migration's
    hand-off), after which a new worker pulls for the container and this thread ends with its run."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self._lock = threading.Lock()
        self.released = False

    def release(self) -> bool:
        with self._lock:
            if self.released:
                return False
            self.released = True
        self.container.release()
        return True


class Abandoned(Exception):
    """The invoker is stopping and killed the runtime under a run: leave the entry for another invoker."""


class Dispatcher:
    def __init__(self, settings: Settings, r: Any, keys: Keys, store: ActivationStore, pool: ContainerPool,
                 actions: ActionCache, metrics: InvokerMetrics, consumer: str, *, lean: ThreadRedis | None = None
                 ) -> None:
        self.settings, self.r, self.keys, self.store = settings, r, keys, store
        self.pool, self.actions, self.metrics, self.consumer = pool, actions, metrics, consumer
        self.group = keys.consumer_group()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.in_flight: dict[str, InFlight] = {}
        self.run_seconds: dict[tuple[str, str], float] = {}  # EWMA of run durations per action
        self.threads: list[threading.Thread] = []
        self.leases = LeaseSet()  # slot leases held by migrated runs of this invoker (renewed every heartbeat)
        # the warm path's own Redis calls (XREADGROUP, the claim script) on one connection per thread
        self.lean = lean or ThreadRedis(r)
        self.claims = claims.RunClaims(r, keys, consumer, self.group, settings.claim_idle_ms,
                                       settings.prefetch_window_s, run_script=self.lean.run_script)

    # --- workers ------------------------------------------------------------------------
    def start_workers(self, container: Container) -> None:
        assert container.action is not None
        queue = self.keys.action_queue(container.action.namespace, container.action.name)
        streams.ensure_group(self.r, queue, self.group)
        if container.handle is not None:  # only a one-at-a-time container's records carry its logs
            container.handle.logs.collecting = container.concurrency == 1
        for slot in range(container.concurrency):
            self._start_worker(container, queue, str(slot))

    def _start_worker(self, container: Container, queue: str, name: str) -> None:
        thread = threading.Thread(target=self._work, args=(container, queue), daemon=True,
                                  name=f"run-{container.id}-{name}")
        thread.start()
        with self._lock:  # a container's workers end with it: keep only the live ones (no growth per restart)
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)

    def _work(self, container: Container, queue: str) -> None:
        while not self.stopping.is_set() and container.state is not container.state.REMOVING:
            if not container.wait_free(BLOCK_MS / 1000):
                continue  # every slot is taken (e.g. by a migrated run's lease): do not pull work it cannot run
            try:
                entries = self.lean.xreadgroup_one_stream(self.group, self.consumer, queue, 1, BLOCK_MS)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    streams.ensure_group(self.r, queue, self.group)
                    continue
                raise
            except redis.ConnectionError:
                if self.stopping.is_set():
                    return
                log.warning("redis connection lost; retrying")
                self.stopping.wait(0.5)
                continue
            for entry_id, fields in entries:
                if self._take(container, queue, str(entry_id), fields):
                    return  # the slot went to a new worker at a migration's hand-off

    def _take(self, container: Container, queue: str, entry_id: str, fields: Mapping[Any, Any]) -> bool:
        """Run one entry; True when its slot was released early (a new worker took over the container)."""
        if self.stopping.is_set() or not container.acquire():
            # removed (keep-alive) or shutting down between the read and now: hand the entry back
            streams.requeue(self.r, queue, self.group, entry_id, fields, streams.attempt_of(fields))
            return False
        slot = SourceSlot(container)
        handed_off = False

        def release_early() -> None:
            nonlocal handed_off
            if slot.release() and not self.stopping.is_set() and container.state is not container.state.REMOVING:
                handed_off = True
                self._start_worker(container, queue, "after-handoff")

        try:
            self.handle(container, queue, entry_id, fields, release_early)
        except Exception:
            log.exception("handling %s of %s failed; the entry stays pending for the reclaimer", entry_id, queue)
        finally:
            slot.release()
        return handed_off

    # --- one entry ------------------------------------------------------------------------
    def handle(self, container: Container, queue: str, entry_id: str, fields: Mapping[Any, Any],
               release_early: Callable[[], None] | None = None) -> None:
        try:
            inv = ActivationStore.decode_message(fields)
        except ValueError as exc:
            log.error("dropping a malformed entry %s of %s: %s", entry_id, queue, exc)
            streams.ack_delete(self.r, queue, self.group, entry_id)
            return
        aid = inv.activation_id
        claim = self.keys.activation_claim(aid)
        # one round trip (invoker.claims): is a record stored already (then ack + delete), take the run
        # claim, and register the run (unless its deadline has passed: it gets a timeout record, no run)
        run = None if now_ms() >= inv.deadline_ms else self._run_fields(container, inv)
        taken = self.claims.claim(aid, queue, entry_id, run)
        if taken.outcome == claims.FINISHED:
            return
        if taken.outcome == claims.HELD:
            log.info("activation %s is claimed by %s; leaving entry %s pending", aid, taken.owner, entry_id)
            return
        with self._lock:
            self.in_flight[entry_id] = InFlight(queue, entry_id, aid)
        try:
            try:
                record, ran_on = self.execute(container, inv, streams.attempt_of(fields), release_early, run)
            except Abandoned:
                log.warning("abandoning %s on shutdown; it will be reclaimed and run elsewhere", aid)
                if self.r.get(claim) == self.consumer:
                    self.r.delete(claim)
                return
            # the record (exactly once: SET NX), then the ack + delete of the entry, the release of our
            # claim and the run's unregistration, in one script: the entry is never acked without its
            # record stored
            if not self.store.complete_and_ack(record, queue, self.group, entry_id, claim, self.consumer, ran_on):
                log.info("activation %s already had a record; this run's result is dropped", aid)
        finally:
            with self._lock:
                self.in_flight.pop(entry_id, None)

    def execute(self, container: Container, inv: Invocation, attempt: int = 1,
                release_early: Callable[[], None] | None = None, run: dict[str, Any] | None = None
                ) -> tuple[ActivationRecord, list[str]]:
        """Run ``inv`` on ``container``; the record and the nodes the run is registered on (``run``: its
        registry fields, written by the claim; ``None``: its deadline had passed, it does not run)."""
        action = self.actions.get(inv.namespace, inv.action)
        limits = action.limits if action else Limits()
        node = self.settings.node_id
        assert container.handle is not None
        if run is None:
            return failure_record(inv, ActivationStatus.DEVELOPER_ERROR, timeout_message(limits), node, now_ms(),
                                  timed_out=True, limits=limits), []
        cold = container.take_cold()
        collect_logs = container.concurrency == 1
        if collect_logs:
            container.handle.logs.clear()
        value = dict(inv.params)
        stream_to: runtime_client.TokenSink | None = None
        stream_complete = False  # a re-run of a stream whose client already got its end
        if inv.stream:
            # every attempt generates the same tokens (a seed derived from the activation id), and a
            # re-run after a lost invoker forwards only what the client has not had yet (invoker.replay)
            value = replay.with_replay_seed(value, inv.activation_id)
            value["stream"] = True

            def append(chunk: dict[str, Any]) -> None:
                self.store.append_tokens(inv.activation_id, chunk)

            stream_to, before = replay.stream_sink(self.r, self.keys.activation_tokens(inv.activation_id), append)
            stream_complete = before.done
            if before.text or before.token_ids:
                log.info("re-running streamed %s (attempt %d): %d chars already delivered", inv.activation_id,
                         attempt, len(before.text))
        body = {
            "value": value, "namespace": inv.namespace, "action_name": inv.action,
            "action_version": inv.action_version, "activation_id": inv.activation_id,
            "transaction_id": inv.transaction_id, "deadline": str(inv.deadline_ms),
        }
        start_ms = now_ms()
        broken = False
        timed_out = False
        running = migration.RunningRun.model_construct(**run)  # what a migration hands off (fields made here)
        handoff: Handoff | None = None
        outcome: runtime_client.RunOutcome
        handed_off = False

        def release_source() -> None:  # the source stopped at a hand-off: its slot takes new work now
            nonlocal handed_off
            handed_off = True
            if release_early is not None:
                release_early()

        slots = LeasedSlots(self.settings, self.r, self.keys, self.leases, release_source, inv.deadline_ms)
        try:
            outcome = runtime_client.run(container.handle.url, body, inv.deadline_ms, stream_to)
            # a live migration stopped the run here: it continues on the destination (faas_llm.migration)
            handoff = continue_if_migrated(
                self.r, self.keys, running, body, outcome,
                lambda url, b, s: runtime_client.run(url, b, inv.deadline_ms, s), stream_to, slots)
            if handoff is not None:
                outcome = handoff.outcome  # type: ignore[assignment]
        except runtime_client.RunTimedOut:
            timed_out, broken = True, True
            outcome = runtime_client.RunOutcome(ActivationStatus.DEVELOPER_ERROR, {"error": timeout_message(limits)})
        except runtime_client.RuntimeGone as exc:
            broken = True
            log.warning("container %s died running %s: %s", container.id, inv.activation_id, exc)
            outcome = runtime_client.RunOutcome(ActivationStatus.DEVELOPER_ERROR,
                                                {"error": DeveloperError.default_message})
        ran_on = [node, *(handoff.nodes if handoff else [])]  # unregistered with the record (complete_and_ack)
        end_ms = now_ms()
        if broken and self.stopping.is_set():
            migration.unregister_run(self.r, self.keys, inv.activation_id, ran_on)
            raise Abandoned(inv.activation_id)
        if not timed_out and outcome.status is ActivationStatus.DEVELOPER_ERROR and end_ms >= inv.deadline_ms:
            timed_out = True
            outcome.result = {"error": timeout_message(limits)}
        # after a hand-off the source container may already serve (or have made way for) other work
        alive = not broken and (handed_off or self.pool.factory.alive(container.handle))
        logs = container.handle.logs.collect(timeout_s=1.0 if alive and not handed_off else 0.2) \
            if collect_logs else []
        if inv.stream and not stream_complete:
            self._finish_stream(inv, outcome)
        wait_s = max(0, start_ms - inv.enqueued_ms) / 1000
        if outcome.first_token_s is not None:
            ttft: float | None = wait_s + outcome.first_token_s
        else:
            own = runtime_ttft(outcome.result)
            ttft = wait_s + own if own is not None else None
        facts = RunFacts(
            start_ms=start_ms, end_ms=end_ms, status=outcome.status, result=outcome.result, node=node, logs=logs,
            cold_start=cold is not None, load_tier=cold.load_tier if cold else LoadTier.WARM,
            load_s=cold.load_s if cold else 0.0, init_ms=cold.init_ms if cold else None, ttft_s=ttft,
            timed_out=timed_out,
        )
        self._observe(inv, facts)
        if (broken or not alive) and not handed_off:
            self.pool.replace(container)
        record = build_record(inv, facts, limits)
        return (handoff.annotate(record) if handoff is not None else record), ran_on

    def _run_fields(self, container: Container, inv: Invocation) -> dict[str, Any]:
        """Where the activation runs (what a live migration moves; the model's popularity is counted with it):
        :class:`faas_llm.migration.RunningRun`'s fields, in its order."""
        assert container.handle is not None
        return {
            "activation_id": inv.activation_id, "node": self.settings.node_id, "container": container.id,
            "url": container.handle.url, "namespace": inv.namespace, "action": inv.action,
            "model": container.action.exec.model if container.action else "", "deadline_ms": inv.deadline_ms,
            "started_ms": now_ms(), "max_tokens": _max_tokens(inv.params),
        }

    def _finish_stream(self, inv: Invocation, outcome: runtime_client.RunOutcome) -> None:
        done: dict[str, Any] = {"done": True}
        result = outcome.result if isinstance(outcome.result, dict) else {}
        if outcome.status is ActivationStatus.SUCCESS:
            done.update(finish_reason=result.get("finish_reason"), usage=result.get("usage"))
        else:
            done.update(finish_reason="error", error=result.get("error"))
            if "http_status" in result:  # the client's mistake (e.g. a prompt too long): see runtime_client.classify
                done["http_status"] = result["http_status"]
        self.store.append_tokens(inv.activation_id, done)

    def _observe(self, inv: Invocation, facts: RunFacts) -> None:
        seconds = (facts.end_ms - facts.start_ms) / 1000
        key = (inv.namespace, inv.action)
        with self._lock:
            old = self.run_seconds.get(key)
            self.run_seconds[key] = seconds if old is None else 0.7 * old + 0.3 * seconds
        self.metrics.run_seconds.observe(seconds)
        self.metrics.activations.labels(
            start="cold" if facts.cold_start else "warm", tier=(facts.load_tier or LoadTier.WARM).value,
            status=facts.status.label,
        ).inc()

    # --- leases -------------------------------------------------------------------------
    def renew_leases(self) -> None:
        """Reset the idle time of our in-flight entries and extend their run claims."""
        self.leases.renew(self.r, self.keys, slot_lease.lease_ttl_ms(self.settings))
        with self._lock:
            flights = list(self.in_flight.values())
        if not flights:
            return
        pipe = self.r.pipeline(transaction=False)
        for f in flights:
            pipe.xclaim(f.queue, self.group, self.consumer, 0, [f.entry_id], justid=True)
            pipe.pexpire(self.keys.activation_claim(f.activation_id), self.settings.claim_idle_ms)
        pipe.execute(raise_on_error=False)

    # --- failing what cannot run ---------------------------------------------------------
    def fail_backlog(self, namespace: str, action: str, status: ActivationStatus, message: str, limit: int) -> int:
        """Take up to ``limit`` undelivered invocations of an action and complete each with an error."""
        queue = self.keys.action_queue(namespace, action)
        streams.ensure_group(self.r, queue, self.group)
        resp = self.r.xreadgroup(self.group, self.consumer, {queue: ">"}, count=max(1, limit))
        failed = 0
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                try:
                    inv = ActivationStore.decode_message(fields)
                except ValueError:
                    streams.ack_delete(self.r, queue, self.group, entry_id)
                    continue
                if self.store.complete(failure_record(inv, status, message, self.settings.node_id, now_ms())):
                    failed += 1
                streams.ack_delete(self.r, queue, self.group, entry_id)
        return failed

    def expire_backlog(self, namespace: str, action: str, limits: Limits | None = None, most: int = 100) -> int:
        """Complete with a timeout record the oldest undelivered invocations whose deadline passed."""
        queue = self.keys.action_queue(namespace, action)
        streams.ensure_group(self.r, queue, self.group)
        expired = 0
        for _ in range(most):
            head = streams.head_undelivered(self.r, queue, self.group)
            if head is None:
                break
            try:
                inv = ActivationStore.decode_message(head[1])
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
                streams.requeue(self.r, queue, self.group, entry_id, fields, streams.attempt_of(fields))
                break
            if inv is not None:
                limits = limits or Limits()
                self.store.complete(failure_record(inv, ActivationStatus.DEVELOPER_ERROR, timeout_message(limits),
                                                   self.settings.node_id, now_ms(), timed_out=True, limits=limits))
                expired += 1
            streams.ack_delete(self.r, queue, self.group, entry_id)
        return expired

    def expected_run_s(self, namespace: str, action: str, default: float = 2.0) -> float:
        with self._lock:
            return self.run_seconds.get((namespace, action), default)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
