"""The gateway worker's digest-checked actions: invocations are built from the actions a worker read,
and the admission script queues one only if its action is still the stored one (updated, deleted, re-created actions
take effect at the very next invoke, in every worker), with no side effect when it is not."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from faas_llm.actions_store import ActionStore
from faas_llm.activations import ActivationStore
from faas_llm.auth import Identity
from faas_llm.errors import NotFoundError
from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits, StaleAction, action_digest, minute_of
from faas_llm.settings import Settings
from faas_llm.types import Invocation
from gateway.protocol import ActionPut
from gateway.services.actions import ActionService
from gateway.services.invoke import InvokeService

NS = "ns"
WHO = Identity(namespace=NS, uuid="u")


def worker(client: redis.Redis, keys: Keys, settings: Settings) -> InvokeService:
    """One gateway worker's services (each worker process has its own cache)."""
    return InvokeService(ActionService(ActionStore(client, keys), settings), ActivationStore(client, keys),
                         Limiter(client, keys, NamespaceLimits(10**6, 10**6)), settings)


def put(service: InvokeService, name: str, greeting: str, *, timeout: int | None = None) -> None:
    body: dict[str, Any] = {"exec": {"kind": "llm", "model": "m"},
                            "parameters": [{"key": "greeting", "value": greeting}]}
    if timeout is not None:
        body["limits"] = {"timeout": timeout}
    service.actions.put(NS, name, ActionPut.model_validate(body), overwrite=True)


def queued(client: redis.Redis, keys: Keys, name: str) -> list[Invocation]:
    entries: Any = client.xrange(keys.action_queue(NS, name))
    return [ActivationStore.decode_message(fields) for _, fields in entries]


def calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(data_dir=tmp_path)


def test_warm_submit_reads_no_action(redis_client: redis.Redis, keys: Keys, settings: Settings) -> None:
    a = worker(redis_client, keys, settings)
    put(a, "act", "hi")
    a.submit(WHO, NS, "act", {}, "t1")
    gets, scripts = calls(redis_client, "get"), calls(redis_client, "evalsha")
    submitted = a.submit(WHO, NS, "act", {"x": 1}, "t2")
    # one script call, whose own GET of the action is the only one (a read by the gateway would be a second)
    assert (calls(redis_client, "get"), calls(redis_client, "evalsha")) == (gets + 1, scripts + 1)
    assert submitted.invocation.params == {"greeting": "hi", "x": 1}
    assert [i.params for i in queued(redis_client, keys, "act")] == [{"greeting": "hi"}, {"greeting": "hi", "x": 1}]


def test_an_update_by_another_worker_applies_to_the_next_invoke(redis_client: redis.Redis, keys: Keys,
                                                                 settings: Settings) -> None:
    a, b = worker(redis_client, keys, settings), worker(redis_client, keys, settings)
    put(a, "act", "hi", timeout=60_000)
    first = a.submit(WHO, NS, "act", {}, "t1")
    put(b, "act", "hello", timeout=30_000)  # a's cache still holds the first definition
    second = a.submit(WHO, NS, "act", {}, "t2")
    assert second.action.limits.timeout == 30_000 and second.action.version != first.action.version
    assert second.invocation.deadline_ms - second.invocation.enqueued_ms == 30_000
    invocations = queued(redis_client, keys, "act")
    assert [i.params["greeting"] for i in invocations] == ["hi", "hello"]
    assert [i.action_version for i in invocations] == [first.action.version, second.action.version]
    # exactly one in flight per queued invocation: the refused (stale) try counted nothing
    assert redis_client.zcard(keys.inflight(NS)) == 2
    assert int(redis_client.get(keys.rate_window(NS, minute_of(second.invocation.enqueued_ms))) or 0) == 2


def test_a_deleted_action_is_not_found_at_once_and_recreated_is_used(redis_client: redis.Redis, keys: Keys,
                                                                     settings: Settings) -> None:
    a, b = worker(redis_client, keys, settings), worker(redis_client, keys, settings)
    put(a, "act", "hi")
    a.submit(WHO, NS, "act", {}, "t1")
    b.actions.delete(NS, "act")
    with pytest.raises(NotFoundError):
        a.submit(WHO, NS, "act", {}, "t2")
    assert len(queued(redis_client, keys, "act")) == 1 and redis_client.zcard(keys.inflight(NS)) == 1
    put(b, "act", "again")
    assert a.submit(WHO, NS, "act", {}, "t3").invocation.params == {"greeting": "again"}
    with pytest.raises(NotFoundError):
        a.submit(WHO, NS, "never", {}, "t4")


def test_stale_admission_changes_nothing_and_returns_the_stored_json(redis_client: redis.Redis, keys: Keys,
                                                                     settings: Settings) -> None:
    a = worker(redis_client, keys, settings)
    put(a, "act", "hi")
    key = keys.action(NS, "act")
    stored = redis_client.get(key)
    assert isinstance(stored, str)
    inv = Invocation(activation_id="c" * 32, namespace=NS, action="act", action_version="0.0.1", subject=NS,
                     params={}, transaction_id="t", enqueued_ms=1000, deadline_ms=2000)
    limiter, store = a.limiter, a.activations
    before = sorted(redis_client.keys("*"))
    outcome = limiter.admit_if_current(NS, inv.activation_id, 10**13, 1000, store.queue_write(inv), key, "0" * 40)
    assert outcome == StaleAction(stored)
    assert sorted(redis_client.keys("*")) == before  # no counter, no in-flight entry, no queue
    missing = limiter.admit_if_current(NS, inv.activation_id, 10**13, 1000, store.queue_write(inv),
                                       keys.action(NS, "gone"), action_digest(stored))
    assert missing == StaleAction(None) and sorted(redis_client.keys("*")) == before
    admitted = limiter.admit_if_current(NS, inv.activation_id, 10**13, 1000, store.queue_write(inv), key,
                                        action_digest(stored))
    assert not isinstance(admitted, StaleAction) and admitted.entry_id is not None
    assert queued(redis_client, keys, "act") == [inv]
