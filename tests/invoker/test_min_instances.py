"""``min_instances`` before any invocation: the pure rule, the action store's queue registration, the
stream helpers on a queue whose stream does not exist yet, and the scheduler starting the minimum
(the end-to-end check is ``tests/e2e/test_system.py::test_min_instances_*``)."""

from __future__ import annotations

import json
from typing import Any

import redis

from faas_llm.actions_store import ActionStore
from faas_llm.autoscale import instances_to_start, starts_below_min
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.placement import make_policy
from faas_llm.settings import Settings
from faas_llm.starts import START_REQUEST_FIELD
from faas_llm.types import Action, ContainerInfo, ContainerState, Exec, NodeReport, Scaling
from invoker import streams
from invoker.cluster import ActionDefinitions, publish_report
from invoker.scheduler import Scheduler


def test_starts_below_min_counts_only_what_reaches_min_within_max() -> None:
    assert starts_below_min(Scaling(), 0) == 0
    assert starts_below_min(Scaling(min_instances=2), 0) == 2
    assert starts_below_min(Scaling(min_instances=2), 1) == 1
    assert starts_below_min(Scaling(min_instances=2), 3) == 0
    assert starts_below_min(Scaling(min_instances=5, max_instances=3), 1) == 2  # max caps the minimum
    # and the autoscaler asks for the minimum with no demand at all
    assert instances_to_start(Scaling(min_instances=2), 0, 0, 0) == 2
    assert instances_to_start(Scaling(min_instances=2), 2, 0, 0) == 0


def _put(store: ActionStore, name: str, **scaling: Any) -> Action:
    def build(existing: Action | None) -> Action:
        return Action(namespace="guest", name=name, exec=Exec(kind="llm", model="tiny"), scaling=Scaling(**scaling))

    return store.put("guest", name, build, overwrite=True)


def test_an_action_with_min_instances_registers_its_queue_without_a_stream(redis_client: redis.Redis,
                                                                           keys: Keys) -> None:
    r: Any = redis_client
    store = ActionStore(r, keys)
    _put(store, "plain")
    _put(store, "pinned", min_instances=1)
    queue = keys.action_queue("guest", "pinned")
    assert r.smembers(keys.queues_index()) == {queue}
    assert not r.exists(queue)
    group = keys.consumer_group()
    assert streams.backlog(r, queue, group) == 0
    assert streams.head_undelivered(r, queue, group) is None
    streams.ensure_group(r, queue, group)  # a warm container's worker joins: the stream appears, empty
    assert r.exists(queue) and streams.backlog(r, queue, group) == 0
    assert streams.head_undelivered(r, queue, group) is None


def _scheduler(settings: Settings, r: Any, keys: Keys) -> Scheduler:
    def fail(ns: str, name: str, status: ActivationStatus, message: str, limit: int) -> int:
        raise AssertionError("nothing is queued")

    return Scheduler(settings, r, keys, ActionDefinitions(r, keys, ttl_s=0), make_policy("locality"), "me",
                     lambda ns, a: 1.0, fail)


def _report(r: Any, keys: Keys, node: str, containers: list[ContainerInfo]) -> None:
    publish_report(r, keys, NodeReport(node=node, max_containers=4, memory_mb=8192, free_memory_mb=8192,
                                       containers=containers), ttl_s=30)


def test_scheduler_starts_min_instances_of_an_action_never_invoked(redis_client: redis.Redis, keys: Keys,
                                                                    settings: Settings) -> None:
    r: Any = redis_client
    store = ActionStore(r, keys)
    _put(store, "pinned", min_instances=2)
    # one instance is up and idle: the second still starts (an idle instance is not a second one; the
    # locality policy would otherwise prefer "wait for the warm instance" to a 1 GB registry load)
    idle = ContainerInfo(id="c1", state=ContainerState.IDLE, namespace="guest", action="pinned", model="tiny")
    _report(r, keys, "node-a", [idle])
    sched = _scheduler(settings, r, keys)
    assert sched.tick() == {"guest/pinned": 1}
    [(_id, fields)] = r.xrange(keys.node_starts("node-a"))
    assert json.loads(fields[START_REQUEST_FIELD])["action"] == "pinned"
    assert not r.exists(keys.action_queue("guest", "pinned"))  # nothing was queued for it
    # the start request in flight counts: the next tick starts nothing
    r.delete(keys.placement_lock("guest", "pinned"))
    assert sched.tick() == {}
    # lowered to 0: nothing more starts (scale-in is the invoker's keep-alive pass)
    _put(store, "pinned", min_instances=0)
    r.delete(keys.placement_lock("guest", "pinned"), keys.action_starts("guest", "pinned"))
    assert sched.tick() == {}
