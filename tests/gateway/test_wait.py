"""The blocking wait of the invoke routes: BLMOVE on the done signal and the record's GET in one
round trip (gateway.services.invoke.wait_record_json)."""

from __future__ import annotations

import threading

import redis

from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.types import ActivationRecord, ActivationResponse
from gateway.services.invoke import wait_record_json


def record(aid: str) -> ActivationRecord:
    return ActivationRecord(namespace="ns", name="a", subject="ns", activationId=aid, start=1000, end=1001,
                            response=ActivationResponse.of(ActivationStatus.SUCCESS, {"text": "hi"}))


def test_wait_returns_the_stored_json_whenever_it_is_stored(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActivationStore(redis_client, keys)
    before = record("1" * 32)
    store.complete(before)  # stored before the wait starts: the signal is already raised
    assert wait_record_json(store, before.activationId, 5) == before.model_dump_json()

    during = record("2" * 32)
    timer = threading.Timer(0.3, store.complete, args=(during,))
    timer.start()
    assert wait_record_json(store, during.activationId, 5) == during.model_dump_json()
    timer.join()
    assert redis_client.llen(keys.activation_done(during.activationId)) == 1  # left for other waiters


def test_wait_runs_out_with_none(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActivationStore(redis_client, keys)
    assert wait_record_json(store, "3" * 32, 0.2) is None
    assert wait_record_json(store, "3" * 32, 0) is None
    late = record("3" * 32)
    store.complete(late)
    assert wait_record_json(store, late.activationId, 0) == late.model_dump_json()
