"""The invoker's heartbeat against a real Redis: every lease it holds (run claims with their queue entries'
idle time, slot leases of migrated runs) renewed in one pipeline; a lease let go lapses."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.types import Invocation, new_activation_id, now_ms
from invoker import streams
from invoker.heartbeat import Heartbeat, HeldRun


@pytest.fixture
def r(redis_client: redis.Redis) -> Any:
    return redis_client


def _delivered(r: Any, keys: Keys, consumer: str) -> HeldRun:
    store = ActivationStore(r, keys)
    aid = new_activation_id()
    store.submit(Invocation(activation_id=aid, namespace="guest", action="chat", subject="guest",
                            transaction_id=aid, deadline_ms=now_ms() + 60_000))
    queue = keys.action_queue("guest", "chat")
    streams.ensure_group(r, queue, keys.consumer_group())
    [(_s, [(entry_id, _f)])] = r.xreadgroup(keys.consumer_group(), consumer, {queue: ">"}, count=1)
    r.set(keys.activation_claim(aid), consumer, px=300)
    return HeldRun(queue, entry_id, aid)


def _idle_ms(r: Any, keys: Keys, run: HeldRun) -> int:
    (entry,) = r.xpending_range(run.queue, keys.consumer_group(), run.entry_id, run.entry_id, 1)
    return int(entry["time_since_delivered"])


def test_one_beat_renews_every_run_claim_entry_and_slot_lease(r: Any, keys: Keys) -> None:
    beat = Heartbeat(Settings(claim_idle_ms=15_000, heartbeat_interval_s=1.0), r, keys, "me")
    assert beat.beat() == 0  # nothing held: no round trip
    runs = [_delivered(r, keys, "me") for _ in range(2)]
    for run in runs:
        beat.hold_run(run)
    r.set(keys.slot_lease("L1"), "{}", px=300)
    beat.hold_slot("L1")
    time.sleep(0.2)
    assert all(_idle_ms(r, keys, run) >= 200 for run in runs)
    assert beat.beat() == 3
    for run in runs:
        assert 14_000 < r.pttl(keys.activation_claim(run.activation_id)) <= 15_000
        assert _idle_ms(r, keys, run) < 150
    assert 9_000 < r.pttl(keys.slot_lease("L1")) <= 10_000


def test_a_lease_let_go_is_no_longer_renewed_and_lapses(r: Any, keys: Keys) -> None:
    beat = Heartbeat(Settings(claim_idle_ms=15_000), r, keys, "me")
    kept, dropped = _delivered(r, keys, "me"), _delivered(r, keys, "me")
    beat.hold_run(kept)
    beat.hold_run(dropped)
    beat.hold_slot("L2")
    beat.drop_run(dropped.entry_id)
    beat.drop_slot("L2")
    assert beat.runs() == [kept] and beat.slots() == []
    assert beat.beat() == 1
    time.sleep(0.35)
    assert r.exists(keys.activation_claim(kept.activation_id))
    assert not r.exists(keys.activation_claim(dropped.activation_id))
