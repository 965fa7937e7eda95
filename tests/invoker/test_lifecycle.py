"""An activation's lifecycle against a real Redis: the claim + registration script (the same writes as the
separate calls it replaces: record check, SET NX claim, migration.register_run, popularity.record_invocation),
every transition of invoker.lifecycle, and ActivationStore.where's answer after each."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from faas_llm import migration
from faas_llm.activations import ActivationState, ActivationStore, Whereabouts, state_of
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.popularity import recent_counts, record_invocation
from faas_llm.settings import Settings
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import Invocation, new_activation_id, now_ms
from invoker import lifecycle as claims
from invoker import streams
from invoker.cluster import ActionDefinitions
from invoker.lifecycle import RunLifecycle
from invoker.records import failure_record
from tests.harness import wait_for

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


def _claims(r: Any, keys: Keys, consumer: str = GROUP_CONSUMER, *, through_client: bool = False) -> RunLifecycle:
    # the invoker sends it on its own connection (faas_llm.thread_redis); the client's Script gives the same
    settings = Settings(claim_idle_ms=15_000, prefetch_window_s=900)
    store = ActivationStore(r, keys)
    return RunLifecycle(settings, r, keys, store, ActionDefinitions(r, keys), consumer,
                        run_script=None if through_client else ThreadRedis(r).run_script)


def test_the_script_replies_alike_through_the_client(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    plain = _claims(r, keys, "other", through_client=True)
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
    assert r.xpending(queue, keys.consumer_group())["pending"] == 1  # left for cleanup


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


# --- the lifecycle: one answer to "where is this activation now" -------------------------------------

def test_the_state_the_keys_mean() -> None:
    assert state_of(record=True, claim_owner="c", pending=True) is ActivationState.DONE  # the record decides
    assert state_of(record=False, claim_owner="c", pending=True) is ActivationState.RUNNING
    assert state_of(record=False, claim_owner=None, pending=True) is ActivationState.QUEUED
    assert state_of(record=False, claim_owner=None, pending=False) is ActivationState.UNKNOWN


def test_where_follows_an_activation_from_queued_to_running_to_done(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    assert store.where(new_activation_id()) == Whereabouts(ActivationState.UNKNOWN)
    inv, queue, entry_id = _queued(r, keys, store)
    assert store.where(inv.activation_id) == Whereabouts(ActivationState.QUEUED)  # delivered, not claimed yet
    runs = _claims(r, keys)
    assert runs.claim(inv.activation_id, queue, entry_id, _fields(inv)).outcome == claims.RUN
    assert store.where(inv.activation_id) == Whereabouts(ActivationState.RUNNING, GROUP_CONSUMER, "node-a")
    record = failure_record(inv, ActivationStatus.SUCCESS, "x", "node-a", now_ms())
    assert runs.finish(record, queue, entry_id, ["node-a"])
    assert store.where(inv.activation_id) == Whereabouts(ActivationState.DONE)
    # nothing of the earlier states is left
    aid = inv.activation_id
    assert [r.exists(k) for k in (keys.activation_claim(aid), keys.activation_running(aid),
                                  keys.activation_pending(aid))] == [0, 0, 0]
    assert r.xlen(queue) == 0 and migration.running_on(r, keys, "node-a") == []
    assert not runs.finish(record, queue, entry_id, ["node-a"])  # DONE is final: a second record is dropped


def test_a_released_run_is_queued_again_and_cleanup_puts_it_back_for_the_next_attempt(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    runs = _claims(r, keys)
    runs.claim(inv.activation_id, queue, entry_id, _fields(inv))
    runs.release(inv.activation_id, ["node-a"])
    assert store.where(inv.activation_id) == Whereabouts(ActivationState.QUEUED)
    assert migration.running_on(r, keys, "node-a") == []
    assert r.xpending(queue, keys.consumer_group())["pending"] == 1  # still this consumer's, until cleanup
    live = RunLifecycle(Settings(claim_idle_ms=100), r, keys, store, ActionDefinitions(r, keys), "another")
    time.sleep(0.15)
    assert live.cleanup()["requeued"] == 1
    (entry,) = r.xrange(queue)
    assert streams.attempt_of(entry[1]) == 2 and store.where(inv.activation_id).state is ActivationState.QUEUED


def test_release_leaves_a_claim_another_consumer_took_meanwhile(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, _queue, _entry_id = _queued(r, keys, store)
    r.set(keys.activation_claim(inv.activation_id), "someone-else", px=15_000)
    _claims(r, keys).release(inv.activation_id, [])
    assert store.where(inv.activation_id) == Whereabouts(ActivationState.RUNNING, "someone-else")


def test_a_dead_consumers_run_is_queued_once_its_lease_lapses(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    dead = RunLifecycle(Settings(claim_idle_ms=100), r, keys, store, ActionDefinitions(r, keys), "dead")
    dead.claim(inv.activation_id, queue, entry_id, _fields(inv))
    assert store.where(inv.activation_id).state is ActivationState.RUNNING
    wait_for("the dead consumer's claim to lapse",
             lambda: store.where(inv.activation_id).state is ActivationState.QUEUED, timeout_s=5)


def test_fail_takes_a_queued_activation_to_done_with_its_entry_acked(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    runs = _claims(r, keys)
    assert runs.fail(runs.timeout_record(inv, None), queue, entry_id)
    assert store.where(inv.activation_id) == Whereabouts(ActivationState.DONE)
    record = store.get(inv.activation_id)
    assert record is not None and record.response.statusCode == int(ActivationStatus.DEVELOPER_ERROR)
    assert r.xlen(queue) == 0 and r.xpending(queue, keys.consumer_group())["pending"] == 0


def test_hand_back_puts_the_entry_at_the_tail_with_the_same_attempt(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    inv, queue, entry_id = _queued(r, keys, store)
    (_id, fields), = r.xrange(queue)
    _claims(r, keys).hand_back(queue, entry_id, fields)
    (new_id, new_fields), = r.xrange(queue)
    assert new_id != entry_id and streams.attempt_of(new_fields) == 1
    assert streams.backlog(r, queue, keys.consumer_group()) == 1
    assert store.where(inv.activation_id).state is ActivationState.QUEUED
