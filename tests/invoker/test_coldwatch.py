"""The cold-start watch (invoker.coldwatch) and the scheduler's immediate pass, against a real Redis."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.placement import make_policy
from faas_llm.settings import Settings
from faas_llm.types import Action, Exec, Invocation, NodeReport, Scaling, new_activation_id, now_ms
from invoker import streams
from invoker.cluster import ActionDefinitions, publish_report
from invoker.coldwatch import ColdWatch
from invoker.scheduler import Scheduler


@pytest.fixture
def r(redis_client: redis.Redis) -> Any:
    return redis_client


def _action(r: Any, keys: Keys, name: str) -> None:
    action = Action(namespace="guest", name=name, exec=Exec(kind="llm", model="tiny"), scaling=Scaling())
    r.set(keys.action("guest", name), action.model_dump_json())


def _submit(r: Any, keys: Keys, action: str) -> None:
    aid = new_activation_id()
    ActivationStore(r, keys).submit(Invocation(activation_id=aid, namespace="guest", action=action, subject="guest",
                                               transaction_id=aid, deadline_ms=now_ms() + 60_000))


def _scheduler(settings: Settings, r: Any, keys: Keys, consumer: str) -> Scheduler:
    def fail(ns: str, name: str, status: ActivationStatus, message: str, limit: int) -> int:
        raise AssertionError("unexpected")

    return Scheduler(settings, r, keys, ActionDefinitions(r, keys, ttl_s=0), make_policy("locality"), consumer,
                     lambda ns, a: 1.0, fail)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, queues: list[str]) -> None:
        self.calls.append(queues)


def test_work_for_an_action_without_instances_wakes_at_once_and_nothing_is_missed(r: Any, keys: Keys) -> None:
    seen = Recorder()
    watch = ColdWatch(r, keys, lambda ns, a: False, seen, threading.Event(), block_ms=50)
    assert watch.poll_once() is False and seen.calls == []  # no queue yet
    _submit(r, keys, "chat")  # the queue appears with its first entry: read from its start
    assert watch.poll_once() is True
    assert seen.calls == [[keys.action_queue("guest", "chat")]]
    assert watch.poll_once() is False  # the same entry does not wake it twice
    _submit(r, keys, "chat")  # arrives between two reads: still seen
    _submit(r, keys, "other")
    assert watch.poll_once() is True
    assert sorted(seen.calls[-1]) == sorted([keys.action_queue("guest", "chat"), keys.action_queue("guest", "other")])


def test_queues_of_actions_with_instances_are_not_watched(r: Any, keys: Keys) -> None:
    seen = Recorder()
    warm = {("guest", "chat")}
    watch = ColdWatch(r, keys, lambda ns, a: (ns, a) in warm, seen, threading.Event(), block_ms=50)
    _submit(r, keys, "chat")
    assert watch.watched() == []
    assert watch.poll_once() is False and seen.calls == []
    warm.clear()  # its last container went: the entry still waiting is found
    assert watch.poll_once() is True and seen.calls == [[keys.action_queue("guest", "chat")]]


def test_the_scheduler_can_pass_again_at_once_but_other_invokers_stay_locked_out(r: Any, keys: Keys,
                                                                              settings: Settings) -> None:
    _action(r, keys, "chat")
    _action(r, keys, "other")
    publish_report(r, keys, NodeReport(node="node-a", max_containers=4, memory_mb=8192, free_memory_mb=8192),
                   ttl_s=30)
    mine = _scheduler(settings, r, keys, "me")
    chat = keys.action_queue("guest", "chat")
    streams.ensure_group(r, chat, keys.consumer_group())  # chat's queue exists, empty
    r.sadd(keys.queues_index(), chat)
    _submit(r, keys, "other")
    assert mine.tick() == {"guest/other": 1}  # the periodic pass: takes every action's lock
    _submit(r, keys, "chat")
    assert _scheduler(settings, r, keys, "you").tick() == {}  # another invoker: locked out for now
    # the same invoker's immediate pass for the queue that just got work goes on despite its own lock
    assert mine.tick(only=[chat]) == {"guest/chat": 1}
