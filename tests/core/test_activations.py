import threading
import time

import redis

from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.types import ActivationRecord, ActivationResponse, Invocation, new_activation_id, now_ms


def invocation(aid: str, action: str = "a") -> Invocation:
    return Invocation(activation_id=aid, namespace="guest", action=action, subject="guest",
                      params={"prompt": "hi"}, transaction_id="tx", deadline_ms=now_ms() + 60_000)


def record(aid: str, start: int, name: str = "a", result: object = None) -> ActivationRecord:
    return ActivationRecord(namespace="guest", name=name, subject="guest", activationId=aid, start=start,
                            end=start + 5, duration=5,
                            response=ActivationResponse.of(ActivationStatus.SUCCESS, result or {"n": start}))


def test_submit_puts_one_message_on_the_action_stream(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActivationStore(redis_client, keys)
    aid = new_activation_id()
    store.submit(invocation(aid))
    queue = keys.action_queue("guest", "a")
    assert redis_client.smembers(keys.queues_index()) == {queue}
    [(_, fields)] = redis_client.xrange(queue)
    assert ActivationStore.decode_message(fields).activation_id == aid
    assert store.pending(aid) is not None
    assert store.get(aid) is None


def test_complete_is_exactly_once(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActivationStore(redis_client, keys)
    aid = new_activation_id()
    store.submit(invocation(aid))
    assert store.complete(record(aid, 10, result={"first": True}))
    assert not store.complete(record(aid, 10, result={"second": True}))
    stored = store.get(aid)
    assert stored is not None and stored.response.result == {"first": True}
    assert store.pending(aid) is None
    assert store.count("guest") == 1


def test_wait_wakes_every_blocked_waiter(redis_server, keys: Keys, redis_client: redis.Redis) -> None:
    aid = new_activation_id()
    results: list[object] = []

    def waiter() -> None:
        client = redis.Redis.from_url(redis_server.url)
        results.append(ActivationStore(client, keys).wait(aid, timeout_s=10))
        client.close()

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    ActivationStore(redis_client, keys).complete(record(aid, 1))
    for t in threads:
        t.join(timeout=15)
    assert len(results) == 3 and all(isinstance(r, ActivationRecord) for r in results)


def test_wait_times_out_with_none(redis_client: redis.Redis, keys: Keys) -> None:
    assert ActivationStore(redis_client, keys).wait(new_activation_id(), timeout_s=0.1) is None


def test_list_newest_first_with_filters(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActivationStore(redis_client, keys)
    ids = [new_activation_id() for _ in range(6)]
    for i, aid in enumerate(ids):
        store.complete(record(aid, 100 + i, name="a" if i % 2 == 0 else "b"))
    assert [r.activationId for r in store.query("guest", limit=3)] == ids[::-1][:3]
    assert [r.activationId for r in store.query("guest", skip=2, limit=2)] == ids[::-1][2:4]
    assert [r.start for r in store.query("guest", name="a")] == [104, 102, 100]
    assert [r.start for r in store.query("guest", since=102, upto=104)] == [104, 103, 102]
    assert store.query("other") == []


def test_token_stream_round_trip(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActivationStore(redis_client, keys)
    aid = new_activation_id()
    store.append_tokens(aid, {"text": "he"})
    store.append_tokens(aid, {"text": "llo"})
    store.append_tokens(aid, {"done": True, "finish_reason": "length"})
    chunks = list(store.iter_tokens(aid, timeout_s=5))
    assert [c.data.get("text") for c in chunks] == ["he", "llo", None]
    assert chunks[-1].done


def test_wait_longer_than_the_client_socket_timeout(redis_server, keys: Keys, redis_client: redis.Redis) -> None:
    """A blocking wait must outlive a client whose socket times out sooner than the wait."""
    aid = new_activation_id()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2.0)
    completer = threading.Timer(3.5, lambda: ActivationStore(redis_client, keys).complete(record(aid, 1)))
    completer.start()
    got = ActivationStore(client, keys).wait(aid, timeout_s=10)
    client.close()
    completer.join()  # its pipeline may still be reading the reply when the waiter wakes; the fixture closes it next
    assert got is not None and got.activationId == aid


def test_token_read_blocks_less_than_the_client_socket_timeout(redis_server, keys: Keys) -> None:
    """A long ``block_ms`` on a token stream is cut to one slice instead of timing the socket out."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=1.5)
    try:
        assert ActivationStore(client, keys).read_tokens(new_activation_id(), block_ms=10_000) == []
    finally:
        client.close()
