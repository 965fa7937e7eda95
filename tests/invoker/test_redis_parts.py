"""Queues, reclaim and scheduling against a real Redis (no runtimes): the at-least-once machinery."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.placement import make_policy
from faas_llm.settings import Settings
from faas_llm.starts import START_REQUEST_FIELD
from faas_llm.types import (
    Action,
    CacheInventory,
    ContainerInfo,
    ContainerState,
    Exec,
    Invocation,
    NodeReport,
    Scaling,
    TierInventory,
    new_activation_id,
    now_ms,
)
from invoker import lifecycle, streams
from invoker.cluster import ActionDefinitions, publish_report, read_reports
from invoker.lifecycle import RunLifecycle
from invoker.metrics import InvokerMetrics
from invoker.records import failure_record
from invoker.scheduler import Scheduler

GB = 1_000_000_000


@pytest.fixture
def r(redis_client: redis.Redis) -> Any:
    return redis_client


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={"claim_idle_ms": 100})


def _submit(store: ActivationStore, action: str = "chat", deadline_in_ms: int = 60_000) -> Invocation:
    aid = new_activation_id()
    inv = Invocation(activation_id=aid, namespace="guest", action=action, subject="guest", transaction_id=aid,
                     deadline_ms=now_ms() + deadline_in_ms)
    store.submit(inv)
    return inv


def _read(r: Any, keys: Keys, consumer: str, action: str = "chat", count: int = 10) -> list[tuple[str, Any]]:
    queue = keys.action_queue("guest", action)
    streams.ensure_group(r, queue, keys.consumer_group())
    resp = r.xreadgroup(keys.consumer_group(), consumer, {queue: ">"}, count=count)
    return [(eid, fields) for _s, entries in resp or [] for eid, fields in entries]


def test_backlog_counts_only_undelivered_entries_and_requeue_raises_the_attempt(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    queue = keys.action_queue("guest", "chat")
    group = keys.consumer_group()
    for _ in range(3):
        _submit(store)
    streams.ensure_group(r, queue, group)
    streams.ensure_group(r, queue, group)  # idempotent
    assert streams.backlog(r, queue, group) == 3
    (eid, fields), = _read(r, keys, "c1", count=1)
    assert streams.backlog(r, queue, group) == 2 and streams.attempt_of(fields) == 1
    new_id = streams.requeue(r, queue, group, eid, fields, 2)
    assert streams.backlog(r, queue, group) == 3 and r.xlen(queue) == 3
    assert streams.attempt_of(r.xrange(queue, new_id, new_id)[0][1]) == 2
    (eid2, _f), = _read(r, keys, "c1", count=1)
    streams.ack_delete(r, queue, group, eid2)
    assert r.xlen(queue) == 2 and streams.backlog(r, queue, group) == 2
    assert streams.queue_action(keys, queue) == ("guest", "chat")
    assert streams.queue_action(keys, "other:thing") is None


def test_cleanup_requeues_work_of_a_dead_consumer(r: Any, keys: Keys, fast: Settings) -> None:
    store = ActivationStore(r, keys)
    inv = _submit(store)
    _read(r, keys, "dead-consumer")
    me = RunLifecycle(fast, r, keys, store, ActionDefinitions(r, keys), "me")
    assert me.cleanup(InvokerMetrics("n"))["requeued"] == 0  # not idle long enough yet
    time.sleep(0.15)
    assert me.cleanup(InvokerMetrics("n"))["requeued"] == 1
    (_eid, fields), = _read(r, keys, "alive")
    assert streams.attempt_of(fields) == 2 and ActivationStore.decode_message(fields) == inv
    assert store.get(inv.activation_id) is None  # not lost, not failed: waiting to run again


def test_cleanup_settles_finished_held_expired_and_exhausted_entries(r: Any, keys: Keys, fast: Settings) -> None:
    store = ActivationStore(r, keys)
    finished, held, fresh, exhausted = (_submit(store) for _ in range(4))
    late = _submit(store, deadline_in_ms=50)
    queue, group = keys.action_queue("guest", "chat"), keys.consumer_group()
    entries = _read(r, keys, "dead")
    # the last attempt of `exhausted` was its third
    eid, fields = entries[3]
    streams.requeue(r, queue, group, eid, fields, lifecycle.MAX_ATTEMPTS)
    _read(r, keys, "dead")
    store.complete(failure_record(finished, ActivationStatus.SUCCESS, "x", "n", now_ms()))
    r.set(keys.activation_claim(held.activation_id), "someone-alive", px=60_000)
    time.sleep(0.15)
    counts = RunLifecycle(fast, r, keys, store, ActionDefinitions(r, keys), "me").cleanup(InvokerMetrics("n"))
    assert counts == {"done": 1, "held": 1, "timeout": 1, "failed": 1, "requeued": 1, "dropped": 0}
    assert store.get(late.activation_id).response.result["error"].startswith("The action exceeded")  # type: ignore[union-attr]
    lost = store.get(exhausted.activation_id)
    assert lost is not None and lost.response.statusCode == int(ActivationStatus.INTERNAL_ERROR)
    assert store.get(held.activation_id) is None and store.get(fresh.activation_id) is None
    # left: `held` (pending until its owner takes it back or dies) and `fresh`, re-queued for another run
    assert r.xlen(queue) == 2 and streams.backlog(r, queue, group) == 1


def _action(r: Any, keys: Keys, name: str = "chat", model: str = "tiny", **scaling: Any) -> Action:
    action = Action(namespace="guest", name=name, exec=Exec(kind="llm", model=model), scaling=Scaling(**scaling))
    r.set(keys.action("guest", name), action.model_dump_json())
    return action


def _report(r: Any, keys: Keys, node: str, containers: list[ContainerInfo] | None = None) -> None:
    publish_report(r, keys, NodeReport(node=node, max_containers=2, memory_mb=8192, free_memory_mb=8192,
                                       containers=containers or []), ttl_s=30)


def _no_failures(ns: str, name: str, status: ActivationStatus, message: str, limit: int) -> int:
    raise AssertionError("unexpected")


def _scheduler(settings: Settings, r: Any, keys: Keys, policy: str = "locality") -> Scheduler:
    def fail(ns: str, name: str, status: ActivationStatus, message: str, limit: int) -> int:
        raise AssertionError("unexpected")

    return Scheduler(settings, r, keys, ActionDefinitions(r, keys, ttl_s=0), make_policy(policy), "me",
                     lambda ns, a: 1.0, fail)


def _starts(r: Any, keys: Keys, node: str) -> list[dict[str, Any]]:
    return [json.loads(f[START_REQUEST_FIELD]) for _id, f in r.xrange(keys.node_starts(node))]


def test_scheduler_places_backlog_on_the_dram_node_within_max_instances(r: Any, keys: Keys, settings: Settings
                                                                       ) -> None:
    store = ActivationStore(r, keys)
    _action(r, keys, max_instances=2)
    for _ in range(5):
        _submit(store)
    _report(r, keys, "node-a")
    _report(r, keys, "node-b")
    for node in ("node-a", "node-b"):
        r.set(keys.node_cache(node), CacheInventory(node=node, dram=TierInventory(
            models=["tiny"], read_bandwidth=20 * GB)).model_dump_json())
    sched = _scheduler(settings, r, keys)
    assert sched.tick() == {"guest/chat": 2}
    # one start per node: a node's pool starts no second instance of the action while one starts (WARMING)
    for node in ("node-a", "node-b"):
        assert [s["action"] for s in _starts(r, keys, node)] == ["chat"]
    assert r.zcard(keys.action_starts("guest", "chat")) == 2
    # start requests in flight count as instances: the next tick starts nothing
    r.delete(keys.placement_lock("guest", "chat"))
    assert sched.tick() == {}


def test_a_pass_waits_for_its_own_start_instead_of_one_load_per_queued_request(
        r: Any, keys: Keys, settings: Settings, tmp_path: Path) -> None:
    """Six queued, runs of 0.1 s, one node with a DRAM copy and one with only the registry (a 16 GB model):
    the pass starts one instance from DRAM and lets the rest of the queue wait for it (0.1 s a run), rather
    than a second start where one is starting (wasted: WARMING) or a registry load of minutes."""
    store = ActivationStore(r, keys)
    _action(r, keys, model="big", max_instances=6)
    for _ in range(6):
        _submit(store)
    _report(r, keys, "node-a")
    _report(r, keys, "node-b")
    r.set(keys.node_cache("node-b"), CacheInventory(node="node-b", dram=TierInventory(
        models=["big"], read_bandwidth=20 * GB)).model_dump_json())
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / "model.safetensors", "wb") as f:
        f.truncate(16 * GB)  # sparse: the invoker sizes a checkpoint by its files in a file:// registry
    registry = settings.model_copy(update={"registry": f"file://{tmp_path}"})
    sched = Scheduler(registry, r, keys, ActionDefinitions(r, keys, ttl_s=0), make_policy("locality"), "me",
                      lambda ns, a: 0.1, _no_failures)
    assert sched.tick() == {"guest/chat": 1}
    assert [s["action"] for s in _starts(r, keys, "node-b")] == ["chat"] and not _starts(r, keys, "node-a")


def test_scheduler_counts_reported_instances_and_idle_capacity(r: Any, keys: Keys, settings: Settings) -> None:
    store = ActivationStore(r, keys)
    _action(r, keys, max_instances=4)
    _submit(store)
    idle = ContainerInfo(id="c1", state=ContainerState.IDLE, namespace="guest", action="chat", model="tiny")
    _report(r, keys, "node-a", [idle])
    assert _scheduler(settings, r, keys).tick() == {}  # the idle instance takes it
    assert len(read_reports(r, keys)) == 1


def test_scheduler_keeps_min_instances_without_backlog(r: Any, keys: Keys, settings: Settings) -> None:
    store = ActivationStore(r, keys)
    _action(r, keys, min_instances=1)
    inv = _submit(store)
    (eid, _f), = _read(r, keys, "c")
    streams.ack_delete(r, keys.action_queue("guest", "chat"), keys.consumer_group(), eid)
    assert inv.activation_id
    _report(r, keys, "node-a")
    assert _scheduler(settings, r, keys).tick() == {"guest/chat": 1}


def test_scheduler_fails_invocations_of_a_missing_action(r: Any, keys: Keys, settings: Settings) -> None:
    store = ActivationStore(r, keys)
    inv = _submit(store, action="gone")
    _report(r, keys, "node-a")
    failed: list[tuple[str, str, int]] = []

    def fail(ns: str, name: str, status: ActivationStatus, message: str, limit: int) -> int:
        failed.append((ns, name, limit))
        return limit

    sched = Scheduler(settings, r, keys, ActionDefinitions(r, keys), make_policy("locality"), "me",
                      lambda ns, a: 1.0, fail)
    assert sched.tick() == {}
    assert failed == [("guest", "gone", 1)] and inv.activation_id


def test_invocations_queued_past_their_deadline_get_a_timeout_record(r: Any, keys: Keys, settings: Settings) -> None:
    store = ActivationStore(r, keys)
    late = [_submit(store, deadline_in_ms=-1) for _ in range(2)]
    fresh = _submit(store)
    runs = RunLifecycle(settings, r, keys, store, ActionDefinitions(r, keys), "me")
    assert runs.expire_backlog("guest", "chat") == 2
    for inv in late:
        record = store.get(inv.activation_id)
        assert record is not None and record.response.statusCode == int(ActivationStatus.DEVELOPER_ERROR)
        assert {a.key: a.value for a in record.annotations}["timeout"] is True
    assert store.get(fresh.activation_id) is None
    assert streams.backlog(r, keys.action_queue("guest", "chat"), keys.consumer_group()) == 1
    assert runs.expire_backlog("guest", "chat") == 0


def test_metrics_are_served_for_prometheus() -> None:
    import requests

    from faas_llm.redis_server import free_port

    metrics = InvokerMetrics("n1")
    metrics.starts.labels(kind="cold", tier="dram").inc()
    metrics.containers.labels(state="idle").set(2)
    port = free_port()
    metrics.serve(port)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'faas_llm_invoker_container_starts_total{kind="cold",tier="dram"} 1.0' in text
    assert 'faas_llm_invoker_containers{state="idle"} 2.0' in text
