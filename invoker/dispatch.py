"""Dispatch: warm containers pull the next invocation of their action and run it, at least once.

Each warm container runs ``limits.concurrency`` worker threads; each blocks on ``XREADGROUP`` of its
action's queue (one consumer group for all invokers; this invoker's consumer name). For an entry
(:meth:`Dispatcher.handle`), the lifecycle's transitions (:mod:`invoker.lifecycle`): claim it (or ack a
redelivery of a finished activation, or leave one another live consumer holds), run it, finish it (the
record stored exactly once and the entry acked in one script). While it runs, the invoker's heartbeat
(:mod:`invoker.heartbeat`) renews its claim, so only a dead consumer's entries are reclaimed.

:meth:`Dispatcher.execute` is the run, a pipeline of steps with one job each:

1. :meth:`~Dispatcher._prepare`: the cold-start facts, the logs cleared, the ``/run`` body (a stream's
   replay seed and token sink, :mod:`invoker.replay`);
2. :meth:`~Dispatcher._call_runtime`: ``POST /run``; a live migration's hand-off continues the run on
   another container (:mod:`invoker.handoff`, slots leased by :mod:`invoker.migration_slots`); a runtime
   that dies or outlives the deadline becomes an "action developer error" outcome;
3. a runtime killed under a run while the invoker stops: the run is given up (:class:`Abandoned`);
4. :meth:`~Dispatcher._classify_timeout`: a developer error at or past the deadline is a timeout;
5. :meth:`~Dispatcher._collect_logs`, :meth:`~Dispatcher._end_stream` (the token stream's last chunk);
6. :meth:`~Dispatcher._observe`: run-time metrics; a container that died is replaced;
7. :meth:`~Dispatcher._record`: the activation record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from faas_llm import migration
from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus, DeveloperError
from faas_llm.keys import Keys
from faas_llm.runtime_protocol import run_body
from faas_llm.settings import Settings
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import ActivationRecord, Invocation, Limits, LoadTier, now_ms
from invoker import lifecycle, replay, runtime_client, streams
from invoker.cluster import ActionDefinitions
from invoker.container import ColdFacts, Container
from invoker.handoff import Handoff, continue_if_migrated
from invoker.heartbeat import Heartbeat, HeldRun
from invoker.lifecycle import RunLifecycle
from invoker.metrics import InvokerMetrics
from invoker.migration_slots import LeasedSlots
from invoker.pool import ContainerPool
from invoker.records import RunFacts, build_record, runtime_ttft, timeout_message

log = logging.getLogger(__name__)
BLOCK_MS = 500


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

    def __init__(self, activation_id: str, ran_on: list[str]) -> None:
        super().__init__(activation_id)
        self.ran_on = ran_on


@dataclass
class RunState:
    """One run as :meth:`Dispatcher.execute`'s steps build it up."""

    container: Container
    inv: Invocation
    limits: Limits
    attempt: int
    cold: ColdFacts | None
    collect_logs: bool
    body: dict[str, Any]
    stream_to: runtime_client.TokenSink | None = None
    stream_complete: bool = False  # a re-run of a stream whose client already got its end
    start_ms: int = 0
    end_ms: int = 0
    outcome: runtime_client.RunOutcome | None = None
    broken: bool = False  # the runtime died or did not answer in time
    timed_out: bool = False
    handoff: Handoff | None = None
    handed_off: bool = False  # the source container stopped for a migration (its slot serves other work)

    @property
    def result(self) -> runtime_client.RunOutcome:
        assert self.outcome is not None
        return self.outcome


class Dispatcher:
    def __init__(self, settings: Settings, r: Any, keys: Keys, store: ActivationStore, pool: ContainerPool,
                 actions: ActionDefinitions, metrics: InvokerMetrics, lifecycle: RunLifecycle, heartbeat: Heartbeat,
                 *, lean: ThreadRedis | None = None) -> None:
        self.settings, self.r, self.keys, self.store = settings, r, keys, store
        self.pool, self.actions, self.metrics = pool, actions, metrics
        self.lifecycle, self.heartbeat = lifecycle, heartbeat
        self.consumer, self.group = lifecycle.consumer, lifecycle.group
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.run_seconds: dict[tuple[str, str], float] = {}  # EWMA of run durations per action
        self.threads: list[threading.Thread] = []
        # the warm path's own Redis calls (XREADGROUP; the scripts go through the lifecycle) on one connection
        # per thread
        self.lean = lean or ThreadRedis(r)

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
            self.lifecycle.hand_back(queue, entry_id, fields)
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
            log.exception("handling %s of %s failed; the entry stays pending for cleanup", entry_id, queue)
        finally:
            slot.release()
        return handed_off

    # --- one entry: claim, run, finish ------------------------------------------------------
    def handle(self, container: Container, queue: str, entry_id: str, fields: Mapping[Any, Any],
               release_early: Callable[[], None] | None = None) -> None:
        try:
            inv = ActivationStore.decode_message(fields)
        except ValueError as exc:
            self.lifecycle.drop(queue, entry_id, str(exc))
            return
        aid = inv.activation_id
        # one round trip: a record stored already (then ack + delete), the run claim, the run's registration
        # (unless its deadline has passed: it gets a timeout record, no run)
        run = None if now_ms() >= inv.deadline_ms else self._run_fields(container, inv)
        taken = self.lifecycle.claim(aid, queue, entry_id, run)
        if taken.outcome == lifecycle.FINISHED:
            return
        if taken.outcome == lifecycle.HELD:
            log.info("activation %s is claimed by %s; leaving entry %s pending", aid, taken.owner, entry_id)
            return
        self.heartbeat.hold_run(HeldRun(queue, entry_id, aid))
        try:
            try:
                record, ran_on = self.execute(container, inv, streams.attempt_of(fields), release_early, run)
            except Abandoned as abandoned:
                log.warning("abandoning %s on shutdown; it will be reclaimed and run elsewhere", aid)
                self.lifecycle.release(aid, abandoned.ran_on)
                return
            if not self.lifecycle.finish(record, queue, entry_id, ran_on):
                log.info("activation %s already had a record; this run's result is dropped", aid)
        finally:
            self.heartbeat.drop_run(entry_id)

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

    # --- the run ------------------------------------------------------------------------------
    def execute(self, container: Container, inv: Invocation, attempt: int = 1,
                release_early: Callable[[], None] | None = None, run: dict[str, Any] | None = None
                ) -> tuple[ActivationRecord, list[str]]:
        """Run ``inv`` on ``container``; the record and the nodes the run is registered on (``run``: its
        registry fields, written by the claim; ``None``: its deadline had passed, it does not run)."""
        action = self.actions.get(inv.namespace, inv.action)
        limits = action.limits if action else Limits()
        if run is None:
            return self.lifecycle.timeout_record(inv, limits), []
        job = self._prepare(container, inv, attempt, limits)
        self._call_runtime(job, run, release_early)
        ran_on = [self.settings.node_id, *(job.handoff.nodes if job.handoff else [])]
        if job.broken and self.stopping.is_set():
            raise Abandoned(inv.activation_id, ran_on)
        self._classify_timeout(job)
        alive = self._still_serving(job)
        logs = self._collect_logs(job, alive)
        self._end_stream(job)
        facts = self._facts(job, logs)
        self._observe(inv, facts)
        if not alive and not job.handed_off:
            self.pool.replace(container)
        return self._record(job, facts), ran_on

    def _prepare(self, container: Container, inv: Invocation, attempt: int, limits: Limits) -> RunState:
        assert container.handle is not None
        job = RunState(container, inv, limits, attempt, container.take_cold(), container.concurrency == 1, {})
        if job.collect_logs:
            container.handle.logs.clear()
        value = self._stream_tokens(job, dict(inv.params)) if inv.stream else dict(inv.params)
        job.body = run_body(value, namespace=inv.namespace, action_name=inv.action, action_version=inv.action_version,
                            activation_id=inv.activation_id, transaction_id=inv.transaction_id,
                            deadline_ms=inv.deadline_ms)
        return job

    def _stream_tokens(self, job: RunState, value: dict[str, Any]) -> dict[str, Any]:
        """Send a stream's tokens to the activation's token stream; every attempt generates the same tokens (a
        seed derived from the activation id), and a re-run after a lost invoker forwards only what the client
        has not had yet (:mod:`invoker.replay`)."""
        aid = job.inv.activation_id
        value = replay.with_replay_seed(value, aid)
        value["stream"] = True

        def append(chunk: dict[str, Any]) -> None:
            self.store.append_tokens(aid, chunk)

        job.stream_to, before = replay.stream_sink(self.r, self.keys.activation_tokens(aid), append)
        job.stream_complete = before.done
        if before.text or before.token_ids:
            log.info("re-running streamed %s (attempt %d): %d chars already delivered", aid, job.attempt,
                     len(before.text))
        return value

    def _call_runtime(self, job: RunState, run: dict[str, Any], release_early: Callable[[], None] | None) -> None:
        """``POST /run``, continued elsewhere after a live migration's hand-off; crashes and timeouts become
        the outcome."""
        assert job.container.handle is not None
        deadline_ms = job.inv.deadline_ms
        running = migration.RunningRun.model_construct(**run)  # what a migration hands off (fields made here)

        def release_source() -> None:  # the source stopped at a hand-off: its slot takes new work now
            job.handed_off = True
            if release_early is not None:
                release_early()

        slots = LeasedSlots(self.settings, self.r, self.keys, self.heartbeat, release_source, deadline_ms)
        job.start_ms = now_ms()
        try:
            job.outcome = runtime_client.run(job.container.handle.url, job.body, deadline_ms, job.stream_to)
            # a live migration stopped the run here: it continues on the destination (faas_llm.migration)
            job.handoff = continue_if_migrated(
                self.r, self.keys, running, job.body, job.outcome,
                lambda url, b, s: runtime_client.run(url, b, deadline_ms, s), job.stream_to, slots)
            if job.handoff is not None:
                job.outcome = job.handoff.outcome  # type: ignore[assignment]
        except runtime_client.RunTimedOut:
            job.timed_out, job.broken = True, True
            job.outcome = runtime_client.RunOutcome(ActivationStatus.DEVELOPER_ERROR,
                                                    {"error": timeout_message(job.limits)})
        except runtime_client.RuntimeGone as exc:
            job.broken = True
            log.warning("container %s died running %s: %s", job.container.id, job.inv.activation_id, exc)
            job.outcome = runtime_client.RunOutcome(ActivationStatus.DEVELOPER_ERROR,
                                                    {"error": DeveloperError.default_message})
        job.end_ms = now_ms()

    def _still_serving(self, job: RunState) -> bool:
        """Whether the container can take more work (after a hand-off the source container may already serve,
        or have made way for, other work)."""
        if job.broken:
            return False
        if job.handed_off:
            return True
        assert job.container.handle is not None
        return self.pool.factory.alive(job.container.handle)

    @staticmethod
    def _classify_timeout(job: RunState) -> None:
        """A developer error at or past the deadline is the deadline's doing: a timeout."""
        if not job.timed_out and job.result.status is ActivationStatus.DEVELOPER_ERROR \
                and job.end_ms >= job.inv.deadline_ms:
            job.timed_out = True
            job.result.result = {"error": timeout_message(job.limits)}

    @staticmethod
    def _collect_logs(job: RunState, alive: bool) -> list[str]:
        if not job.collect_logs:
            return []
        assert job.container.handle is not None
        return job.container.handle.logs.collect(timeout_s=1.0 if alive and not job.handed_off else 0.2)

    def _end_stream(self, job: RunState) -> None:
        """The token stream's last chunk (``done``, with the usage or the error), unless a client had it already."""
        if not job.inv.stream or job.stream_complete:
            return
        done: dict[str, Any] = {"done": True}
        result = job.result.result if isinstance(job.result.result, dict) else {}
        if job.result.status is ActivationStatus.SUCCESS:
            done.update(finish_reason=result.get("finish_reason"), usage=result.get("usage"))
        else:
            done.update(finish_reason="error", error=result.get("error"))
            if "http_status" in result:  # the client's mistake (e.g. a prompt too long): see runtime_protocol.classify
                done["http_status"] = result["http_status"]
        self.store.append_tokens(job.inv.activation_id, done)

    def _facts(self, job: RunState, logs: list[str]) -> RunFacts:
        outcome, cold = job.result, job.cold
        wait_s = max(0, job.start_ms - job.inv.enqueued_ms) / 1000
        if outcome.first_token_s is not None:
            ttft: float | None = wait_s + outcome.first_token_s
        else:
            own = runtime_ttft(outcome.result)
            ttft = wait_s + own if own is not None else None
        return RunFacts(
            start_ms=job.start_ms, end_ms=job.end_ms, status=outcome.status, result=outcome.result,
            node=self.settings.node_id, logs=logs, cold_start=cold is not None,
            load_tier=cold.load_tier if cold else LoadTier.WARM, load_s=cold.load_s if cold else 0.0,
            init_ms=cold.init_ms if cold else None, ttft_s=ttft, timed_out=job.timed_out,
        )

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

    @staticmethod
    def _record(job: RunState, facts: RunFacts) -> ActivationRecord:
        record = build_record(job.inv, facts, job.limits)
        return job.handoff.annotate(record) if job.handoff is not None else record

    # ---------------------------------------------------------------------------------------------
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
