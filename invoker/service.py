"""The invoker of one node: wires the pool, dispatch, lifecycle, heartbeat, scheduler and metrics.

Threads: the pool's executor (starting / initialising / removing runtimes), one worker per
run slot of each warm container (:mod:`invoker.dispatch`), the start-request listener (start
requests the placement sent to this node) and the maintenance loop, every
``settings.heartbeat_interval_s``: renew every lease this invoker holds (:mod:`invoker.heartbeat`),
free the slots of lapsed leases held here (:mod:`invoker.slot_grants`), publish the node report, remove idle
containers past their keep-alive (keeping ``min_instances`` cluster-wide; none of a deleted
action), top up prewarmed runtimes, reclaim invocations of dead consumers
(:meth:`invoker.lifecycle.RunLifecycle.cleanup`), schedule backlogged
actions (and the minimum instances of actions with ``min_instances > 0``), update metrics. A
container that becomes ready with no invocation waiting (a ``min_instances`` start) records its
first run as a warm start.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Any

import redis

from faas_llm import starts
from faas_llm.activations import ActivationStore
from faas_llm.autoscale import IdleInstance, scale_in
from faas_llm.errors import ActivationStatus, FaasLLMError
from faas_llm.keys import Keys
from faas_llm.placement import make_policy
from faas_llm.settings import Settings
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import Action, ContainerState, NodeReport, Scaling, now_ms
from invoker import streams
from invoker.cluster import ActionDefinitions, publish_report, read_reports, withdraw_report
from invoker.coldwatch import ColdWatch
from invoker.container import Container
from invoker.dispatch import Dispatcher
from invoker.factories import make_factory
from invoker.factory import ContainerFactory
from invoker.heartbeat import Heartbeat
from invoker.lifecycle import RunLifecycle
from invoker.metrics import InvokerMetrics
from invoker.pool import ContainerPool
from invoker.run_times import RecordingStore, RunTimeBuffer
from invoker.scheduler import Scheduler, instances_of
from invoker.slot_grants import SlotGrants

log = logging.getLogger(__name__)


class Invoker:
    def __init__(self, settings: Settings, factory: ContainerFactory | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.r: Any = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
        # the store also buffers each run's time for the placement's run-time distribution (invoker.run_times)
        self.run_times = RunTimeBuffer(self.keys)
        # the warm path's Redis calls go over one connection per thread (faas_llm.thread_redis)
        self.lean = ThreadRedis(self.r)
        self.store: ActivationStore = RecordingStore(self.r, self.keys, settings.activation_retention_s,
                                                     self.run_times, run_script=self.lean.run_script)
        self.consumer = f"{settings.node_id}:{os.getpid()}:{secrets.token_hex(3)}"
        self.metrics = InvokerMetrics(settings.node_id)
        self.actions = ActionDefinitions(self.r, self.keys)
        self.factory = factory or make_factory(settings)
        self.pool = ContainerPool(settings, self.factory, self.metrics, self._on_ready, self._on_init_failed)
        self.lifecycle = RunLifecycle(settings, self.r, self.keys, self.store, self.actions, self.consumer,
                                      run_script=self.lean.run_script)
        self.heartbeat = Heartbeat(settings, self.r, self.keys, self.consumer)
        self.dispatcher = Dispatcher(settings, self.r, self.keys, self.store, self.pool, self.actions, self.metrics,
                                     self.lifecycle, self.heartbeat, lean=self.lean)
        self.scheduler = Scheduler(settings, self.r, self.keys, self.actions, make_policy(settings.placement_policy),
                                   self.consumer, self.dispatcher.expected_run_s, self.lifecycle.fail_backlog,
                                   self.lifecycle.expire_backlog, lambda: self.pool.boot_s, self._send_migrate)
        self.stopping = threading.Event()
        self.grants = SlotGrants(self.r, self.keys, self.pool, self.stopping)  # our slots held by migrated runs
        self.draining = False
        self._threads: list[threading.Thread] = []
        self._starts_after = "0-0"
        self._celery: Any = None
        self._reports: list[NodeReport] = []  # the other nodes' reports, as of the last maintenance pass
        # a cold start is scheduled the moment its invocation arrives, not at the next maintenance tick
        self.coldwatch = ColdWatch(self.r, self.keys, self._has_instance, self._schedule_now, self.stopping)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> Invoker:
        if self.settings.invoker_metrics_port:
            self.metrics.serve(self.settings.invoker_metrics_port, self.settings.runtime_host)
        last = self.r.xrevrange(self.keys.node_starts(self.settings.node_id), count=1)
        self._starts_after = last[0][0] if last else "0-0"
        self.publish()
        self.pool.ensure_prewarm()
        for target, name in ((self._maintain, "maintain"), (self._listen_starts, "starts"),
                             (self.coldwatch.run, "coldwatch")):
            thread = threading.Thread(target=target, name=f"invoker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("invoker %s up (consumer %s, policy %s, factory %s)", self.settings.node_id, self.consumer,
                 self.settings.placement_policy, self.factory.name)
        return self

    def stop(self) -> None:
        """Stop pulling, let runs in flight finish (up to the drain period), remove every container."""
        if self.stopping.is_set():
            return
        self.draining = True
        self.stopping.set()
        self.dispatcher.stop(timeout_s=self.settings.runtime_drain_s)
        for thread in self._threads:
            thread.join(5)
        self.pool.close()
        try:
            withdraw_report(self.r, self.keys, self.settings.node_id)
        except redis.RedisError:
            pass
        self.factory.close()
        if self._celery is not None:
            self._celery.close()
        self.r.close()

    def wait(self) -> None:
        while not self.stopping.wait(1.0):
            pass

    def _send_migrate(self, activation_id: str, destination: str) -> None:
        """Queue a live migration (the Celery ``faas_llm.migrate`` task; the app is made on first use)."""
        from faas_llm.jobs import create_sender, send_migrate

        if self._celery is None:
            self._celery = create_sender(self.settings)
        send_migrate(self._celery, activation_id, destination)

    # --- callbacks from the pool -----------------------------------------------------------
    def _on_ready(self, container: Container) -> None:
        assert container.action is not None
        queue = self.keys.action_queue(container.action.namespace, container.action.name)
        try:
            if not streams.backlog(self.r, queue, self.keys.consumer_group()):
                container.started_ahead()  # nothing waited for it (min_instances): its first run is warm
        except redis.RedisError:
            pass  # counted as a cold start, as before
        self.dispatcher.start_workers(container)
        self.publish()

    def _on_init_failed(self, action: Action, error: FaasLLMError) -> None:
        """No instance of the action can start: fail what waits for it, clearly, instead of retrying forever."""
        queue = self.keys.action_queue(action.namespace, action.name)
        waiting = streams.backlog(self.r, queue, self.keys.consumer_group())
        if waiting:
            failed = self.lifecycle.fail_backlog(action.namespace, action.name, ActivationStatus.DEVELOPER_ERROR,
                                                  error.message, waiting)
            log.warning("init of %s/%s failed; failed %d waiting invocations", action.namespace, action.name, failed)
        self.publish()

    # --- node report ------------------------------------------------------------------------
    def report(self) -> NodeReport:
        return NodeReport(
            node=self.settings.node_id, ts=now_ms(), containers=self.pool.snapshot(),
            max_containers=self.settings.max_containers, memory_mb=self.settings.node_memory_mb,
            free_memory_mb=self.pool.free_memory_mb(), draining=self.draining,
        )

    def publish(self) -> None:
        publish_report(self.r, self.keys, self.report(), self.settings.node_ttl_s)

    # --- start requests ---------------------------------------------------------------------
    def _listen_starts(self) -> None:
        key = self.keys.node_starts(self.settings.node_id)
        last = self._starts_after
        while not self.stopping.is_set():
            try:
                resp = self.r.xread({key: last}, count=16, block=500)
            except redis.ConnectionError:
                self.stopping.wait(0.5)
                continue
            for _stream, entries in resp or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self._handle_start(fields)

    def _handle_start(self, fields: dict[str, str]) -> None:
        if self.grants.handle(fields):  # a run slot leased to (or given back by) a migrated run
            return
        try:
            ns, name, rid = starts.parse_start(fields)
        except ValueError:
            log.error("ignoring a malformed start request %r", fields)
            return
        action = self.actions.get(ns, name)
        try:
            if action is not None and not self.draining:
                self.pool.place(action)
                self.publish()
        finally:
            self.r.zrem(self.keys.action_starts(ns, name), rid)

    # --- maintenance ------------------------------------------------------------------------
    def _maintain(self) -> None:
        while not self.stopping.wait(self.settings.heartbeat_interval_s):
            try:
                self.maintain_once()
            except redis.ConnectionError as exc:
                log.warning("maintenance: redis unavailable: %s", exc)
            except Exception:
                log.exception("maintenance pass failed")

    def maintain_once(self) -> None:
        self.heartbeat.beat()
        self.grants.sweep()
        self.run_times.flush(self.r)
        self.publish()
        reports = read_reports(self.r, self.keys)
        self._reports = [rep for rep in reports if rep.node != self.settings.node_id]
        self.expire_idle(reports)
        # faas-llm node drain: no new work while the key exists; idle and prewarmed containers go (the
        # drain waits for an empty node). Under the pool's lock: a placement binds a prewarmed runtime there.
        self.draining = self.stopping.is_set() or bool(self.r.exists(self.keys.node_drain(self.settings.node_id)))
        if self.draining:
            with self.pool.lock:
                for c in self.pool._live():
                    if c.state is ContainerState.IDLE:
                        self.pool.remove(c.id, graceful=True, only_if_idle=True)
                    elif c.state is ContainerState.PREWARMED and c.action is None:
                        self.pool.remove(c.id, graceful=True)
        if not self.draining:
            self.pool.ensure_prewarm()
        self.lifecycle.cleanup(self.metrics)
        self.scheduler.tick()
        self._gauges()

    def _has_instance(self, namespace: str, action: str) -> bool:
        """Whether the action has an instance here (the pool, now) or on another node (its last report)."""
        return bool(self.pool.of_action(namespace, action)) or instances_of(self._reports, namespace, action)[0] > 0

    def _schedule_now(self, queues: list[str]) -> None:
        self.scheduler.tick(only=queues)

    def expire_idle(self, reports: list[NodeReport]) -> list[str]:
        """Remove idle containers past their action's keep-alive, keeping ``min_instances`` in the cluster."""
        now = time.monotonic()
        by_action: dict[tuple[str, str], list[Container]] = {}
        for c in self.pool._live():
            if c.state is ContainerState.IDLE and c.action is not None:
                by_action.setdefault((c.action.namespace, c.action.name), []).append(c)
        removed: list[str] = []
        for (ns, name), idle in by_action.items():
            action = self.actions.get(ns, name)
            # a deleted action keeps no instance (not even its min_instances) and no keep-alive
            base = action.scaling if action is not None else Scaling(min_instances=0, keep_alive=0.0)
            instances, _ = instances_of(reports, ns, name)
            instances = max(instances, len(self.pool.of_action(ns, name)))
            # a container just initialised gets a few heartbeats to pull its first invocation
            floor = 2 * self.settings.heartbeat_interval_s
            scaling = base.model_copy(update={"keep_alive": max(base.keep_alive, floor)})
            expired = scale_in(scaling, [IdleInstance(c.id, c.last_used) for c in idle], instances, now)
            for cid in self.pool.keep_alive_removals(expired, now):
                if self.pool.remove(cid, graceful=True, only_if_idle=True):
                    removed.append(cid)
        if removed:
            log.info("keep-alive: removed %s", ", ".join(removed))
            self.publish()
        return removed

    def _gauges(self) -> None:
        counts = dict.fromkeys(ContainerState, 0)
        for info in self.pool.snapshot():
            counts[info.state] += 1
        for state, n in counts.items():
            self.metrics.containers.labels(state=state.value).set(n)
        for queue in self.r.smembers(self.keys.queues_index()):
            self.metrics.queue_depth.labels(queue=queue).set(streams.backlog(self.r, queue,
                                                                             self.keys.consumer_group()))
