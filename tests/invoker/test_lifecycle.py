"""The claim + registration script (invoker.claims) against a real Redis: the same writes as the separate
calls it replaces (record check, SET NX claim, migration.register_run, popularity.record_invocation)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from faas_llm import migration
from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.popularity import recent_counts, record_invocation
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import Invocation, new_activation_id, now_ms
from invoker import claims, streams
from invoker.records import failure_record

GROUP_CONSUMER = "node-a:1:abc"


@pytest.fixture
def r(redis_client: redis.Redis) -> Any:
    return redis_client


def _queued(r: Any, keys: Keys, store: ActivationStore) -> tuple[Invocation, str, str]:
    aid = new_activation_id()
    inv = Invocation(activation_id=aid, namespace="guest", action="chat", subject="guest", transaction_id=aid,
                     params={"prompt": "hi", "max_tokens": 7}, deadline_ms=now_ms() + 60_000)
    store.submit(inv)
    queue = keys.action_queue("guest", "chat")
    streams.ensure_group(r, queue, keys.consumer_group())
    [(_s, [(entry_id, _f)])] = r.xreadgroup(keys.consumer_group(), GROUP_CONSUMER, {queue: ">"}, count=1)
    return inv, queue, entry_id


def _fields(inv: Invocation) -> dict[str, Any]:
    return {"activation_id": inv.activation_id, "node": "node-a", "container": "node-a-c1",
            "url": "http://127.0.0.1:9", "namespace": inv.namespace, "action": inv.action, "model": "m1",
            "deadline_ms": inv.deadline_ms, "started_ms": now_ms(), "max_tokens": 7}


def _claims(r: Any, keys: Keys, consumer: str = GROUP_CONSUMER) -> claims.RunClaims:
    # the invoker sends it on its own connection (faas_llm.thread_redis); the client's Script gives the same
    return claims.RunClaims(r, keys, consumer, keys.consumer_group(), 15_000, 900, run_script=ThreadRedis(r).run_script)


def test_the_script_replies_alike_through_the_client(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    plain = claims.RunClaims(r, keys, "other", keys.consumer_group(), 15_000, 900)
    assert _claims(r, keys).claim(inv.activation_id, queue, entry_id, _fields(inv)).outcome == claims.RUN
    assert plain.claim(inv.activation_id, queue, entry_id, _fields(inv)) == claims.Claim(claims.HELD, GROUP_CONSUMER)


def test_a_claimed_run_is_registered_as_register_run_and_record_invocation_would(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    run = _fields(inv)
    assert _claims(r, keys).claim(inv.activation_id, queue, entry_id, run) == claims.Claim(claims.RUN)
    assert r.get(keys.activation_claim(inv.activation_id)) == GROUP_CONSUMER
    assert 14_000 < r.pttl(keys.activation_claim(inv.activation_id)) <= 15_000
    ours = {
        "running": r.get(keys.activation_running(inv.activation_id)),
        "ttl": r.pttl(keys.activation_running(inv.activation_id)),
        "node": r.zrange(keys.node_running("node-a"), 0, -1, withscores=True),
        "popular": recent_counts(r, keys, 900), "all": r.zrange(keys.model_popularity(), 0, -1, withscores=True),
        "window_ttl": r.ttl(keys.model_popularity_window(now_ms() // 60_000)),
    }
    # the oracle: the separate calls the script replaces, under another prefix
    other = Keys("oracle")
    migration.register_run(r, other, migration.RunningRun(**run))
    record_invocation(r, other, "m1", 900)
    assert ours["running"] == migration.RunningRun(**run).model_dump_json()
    assert migration.running(r, keys, inv.activation_id) == migration.RunningRun(**run)
    assert abs(ours["ttl"] - r.pttl(other.activation_running(inv.activation_id))) < 1000
    assert ours["node"] == r.zrange(other.node_running("node-a"), 0, -1, withscores=True) \
        == [(inv.activation_id, float(inv.deadline_ms))]
    assert ours["popular"] == recent_counts(r, other, 900) == {"m1": 1}
    assert ours["all"] == r.zrange(other.model_popularity(), 0, -1, withscores=True)
    assert ours["window_ttl"] == r.ttl(other.model_popularity_window(now_ms() // 60_000)) == 1020
    assert migration.running_on(r, keys, "node-a") == [inv.activation_id]


def test_a_finished_activation_is_acked_and_deleted_and_nothing_runs(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    assert store.complete(failure_record(inv, ActivationStatus.DEVELOPER_ERROR, "x", "node-a", now_ms()))
    assert _claims(r, keys).claim(inv.activation_id, queue, entry_id, _fields(inv)) == claims.Claim(claims.FINISHED)
    assert r.xlen(queue) == 0 and r.xpending(queue, keys.consumer_group())["pending"] == 0
    assert r.get(keys.activation_claim(inv.activation_id)) is None
    assert r.get(keys.activation_running(inv.activation_id)) is None
    assert recent_counts(r, keys, 900) == {}


def test_a_claim_held_by_another_consumer_leaves_everything_as_it_was(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    r.set(keys.activation_claim(inv.activation_id), "someone-else", px=15_000)
    taken = _claims(r, keys).claim(inv.activation_id, queue, entry_id, _fields(inv))
    assert taken == claims.Claim(claims.HELD, "someone-else")
    assert r.get(keys.activation_claim(inv.activation_id)) == "someone-else"
    assert r.get(keys.activation_running(inv.activation_id)) is None and recent_counts(r, keys, 900) == {}
    assert r.xpending(queue, keys.consumer_group())["pending"] == 1  # left for the reclaimer


def test_our_own_claim_runs_again_and_a_late_run_is_claimed_but_not_registered(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    r.set(keys.activation_claim(inv.activation_id), GROUP_CONSUMER, px=15_000)
    assert _claims(r, keys).claim(inv.activation_id, queue, entry_id, _fields(inv)).outcome == claims.RUN
    assert r.get(keys.activation_running(inv.activation_id)) is not None
    late, queue, entry_id = _queued(r, keys, store)
    assert _claims(r, keys).claim(late.activation_id, queue, entry_id, None).outcome == claims.RUN
    assert r.get(keys.activation_claim(late.activation_id)) == GROUP_CONSUMER
    assert r.get(keys.activation_running(late.activation_id)) is None
    assert migration.running_on(r, keys, "node-a") == [inv.activation_id]
    assert recent_counts(r, keys, 900) == {"m1": 1}


def test_complete_and_ack_unregisters_the_run_from_every_node_it_ran_on(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys, run_script=ThreadRedis(r).run_script)
    inv, queue, entry_id = _queued(r, keys, store)
    other, _q, _e = _queued(r, keys, store)
    for i in (inv, other):
        assert _claims(r, keys).claim(i.activation_id, queue, "0-1", _fields(i)).outcome == claims.RUN
    r.zadd(keys.node_running("node-b"), {inv.activation_id: inv.deadline_ms})  # as a migration to node-b does
    record = failure_record(inv, ActivationStatus.DEVELOPER_ERROR, "x", "node-a", now_ms())
    claim = keys.activation_claim(inv.activation_id)
    assert store.complete_and_ack(record, queue, keys.consumer_group(), entry_id, claim, GROUP_CONSUMER,
                                  ["node-a", "node-b", "node-a"])
    assert r.get(keys.activation_running(inv.activation_id)) is None and r.get(claim) is None
    assert migration.running_on(r, keys, "node-a") == [other.activation_id]
    assert migration.running_on(r, keys, "node-b") == []
    assert json.loads(r.get(keys.activation(inv.activation_id)))["activationId"] == inv.activation_id
    assert r.xpending(queue, keys.consumer_group())["pending"] == 1  # only the other one's entry
    # without ran_on nothing of the registry is touched (a run that never registered)
    record = failure_record(other, ActivationStatus.DEVELOPER_ERROR, "x", "node-a", now_ms())
    assert store.complete_and_ack(record, queue, keys.consumer_group(), _e, keys.activation_claim(other.activation_id),
                                  GROUP_CONSUMER)
    assert migration.running_on(r, keys, "node-a") == [other.activation_id]
