"""faas_llm/thread_redis.py as the invoker uses it, against a real Redis: the same replies as redis-py's
client, script reloads, reconnects."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from faas_llm.thread_redis import ThreadRedis
from faas_llm.types import Invocation, new_activation_id, now_ms


@pytest.fixture
def r(redis_client: redis.Redis) -> Any:
    return redis_client


def test_xreadgroup_gives_what_the_client_gives(r: Any, keys: Keys) -> None:
    store = ActivationStore(r, keys)
    for _ in range(3):
        aid = new_activation_id()
        store.submit(Invocation(activation_id=aid, namespace="guest", action="a", subject="guest",
                                transaction_id=aid, deadline_ms=now_ms() + 60_000))
    queue = keys.action_queue("guest", "a")
    r.xgroup_create(queue, "g1", id="0")
    r.xgroup_create(queue, "g2", id="0")
    lean = ThreadRedis(r)
    ours = lean.xreadgroup_one_stream("g1", "c", queue, 2, 100)
    [(_s, theirs)] = r.xreadgroup("g2", "c", {queue: ">"}, count=2, block=100)
    assert ours == [(eid, fields) for eid, fields in theirs] and len(ours) == 2
    assert all(isinstance(eid, str) and "invocation" in f for eid, f in ours)
    assert len(lean.xreadgroup_one_stream("g1", "c", queue, 5, 100)) == 1
    assert lean.xreadgroup_one_stream("g1", "c", queue, 5, 50) == []  # blocked, nothing came
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        lean.xreadgroup_one_stream("nope", "c", queue, 1, 10)


def test_scripts_survive_a_flushed_script_cache_and_a_killed_connection(r: Any) -> None:
    lean = ThreadRedis(r)
    script = r.register_script("redis.call('incr', KEYS[1]); return {tonumber(ARGV[1]), redis.call('get', KEYS[1])}")
    assert lean.run_script(script, ["n"], [7]) == [7, "1"]
    r.script_flush()
    assert lean.run_script(script, ["n"], [8]) == [8, "2"]  # NOSCRIPT: loaded and run again
    name = "lean-test"
    lean.call("CLIENT", "SETNAME", name)
    [ours] = [c for c in r.client_list() if c["name"] == name]
    r.client_kill_filter(_id=ours["id"])
    assert lean.run_script(script, ["n"], [9]) == [9, "3"]  # sent again on a fresh connection
    lean.call("CLIENT", "SETNAME", name)
    [ours] = [c for c in r.client_list() if c["name"] == name]
    r.client_kill_filter(_id=ours["id"])
    with pytest.raises(redis.ConnectionError):
        lean.call("GET", "n")  # a plain call is not sent twice; the next one reconnects
    assert lean.call("GET", "n") == "3"
    with pytest.raises(redis.ResponseError):
        lean.call("INCR", "no such command", "x")


def test_each_thread_has_its_own_connection(r: Any) -> None:
    lean = ThreadRedis(r)
    pairs: list[tuple[int, int]] = []  # one (first, second) CLIENT ID per thread: appends of a pair never interleave
    started = threading.Barrier(3)

    def worker() -> None:
        started.wait()  # all three threads alive at once, so none can inherit another's connection
        first = int(lean.call("CLIENT", "ID"))
        second = int(lean.call("CLIENT", "ID"))
        pairs.append((first, second))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pairs) == 3
    assert all(first == second for first, second in pairs)  # a thread keeps its connection
    assert len({first for first, _ in pairs}) == 3  # and no two threads share one
    lean.close()
