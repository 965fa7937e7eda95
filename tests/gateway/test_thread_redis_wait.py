"""faas_llm/thread_redis.py as the gateway uses it: the hot path's commands on per-thread connections
give redis-py's replies, load the script again after a flush, survive a dropped connection, and keep the
connection in step after an error reply."""

from __future__ import annotations

import threading

import pytest
import redis

from faas_llm.activations import ActivationStore
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import ActivationRecord, ActivationResponse
from gateway.services.invoke import wait_record_json

SCRIPT = "redis.call('incr', KEYS[1]); return {redis.call('get', KEYS[1]), ARGV[1], false}"


def test_replies_as_redis_py(redis_client: redis.Redis) -> None:
    direct = ThreadRedis(redis_client)
    redis_client.set("k", "välue")
    assert direct.execute("GET", "k") == redis_client.get("k") == "välue"
    assert direct.execute("GET", "missing") is None
    assert direct.pipeline([("RPUSH", "l", "a"), ("BLMOVE", "l", "l", "LEFT", "RIGHT", 0.1), ("GET", "k")]) == \
        [1, "a", "välue"]
    script = direct.script(SCRIPT)
    assert script(keys=["n"], args=["x"]) == ["1", "x", None]
    assert redis_client.register_script(SCRIPT)(keys=["n"], args=["x"]) == ["2", "x", None]


def test_script_is_loaded_again_after_a_flush(redis_client: redis.Redis) -> None:
    script = ThreadRedis(redis_client).script(SCRIPT)
    assert script(keys=["n"], args=["a"]) == ["1", "a", None]
    redis_client.script_flush()
    assert script(keys=["n"], args=["b"]) == ["2", "b", None]


def test_a_dropped_connection_is_reopened(redis_client: redis.Redis) -> None:
    direct = ThreadRedis(redis_client)
    assert direct.execute("CLIENT", "SETNAME", "direct-victim") == "OK"
    victims = [c["id"] for c in redis_client.client_list() if c.get("name") == "direct-victim"]
    assert len(victims) == 1
    redis_client.client_kill_filter(_id=victims[0])
    redis_client.set("k", "v")
    assert direct.execute("GET", "k") == "v"


def test_error_reply_keeps_the_connection_in_step(redis_client: redis.Redis) -> None:
    direct = ThreadRedis(redis_client)
    redis_client.set("s", "text")
    with pytest.raises(redis.ResponseError):
        direct.pipeline([("LPUSH", "s", "x"), ("GET", "s")])
    assert direct.execute("GET", "s") == "text"


def test_connections_are_per_thread_and_the_wait_uses_them(redis_client: redis.Redis, keys: Keys) -> None:
    direct = ThreadRedis(redis_client)
    store = ActivationStore(redis_client, keys)
    records = [ActivationRecord(namespace="ns", name="a", subject="ns", activationId=f"{i:032x}", start=1, end=2,
                                response=ActivationResponse.of(ActivationStatus.SUCCESS, {"i": i})) for i in range(4)]
    got: dict[int, str | None] = {}

    def waiter(i: int) -> None:
        got[i] = wait_record_json(store, records[i].activationId, 5, direct)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for record in records:
        store.complete(record)
    for t in threads:
        t.join()
    assert got == {i: records[i].model_dump_json() for i in range(4)}
    assert wait_record_json(store, "f" * 32, 0.1, direct) is None
