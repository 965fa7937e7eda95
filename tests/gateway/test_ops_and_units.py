"""/health and /metrics (werkzeug's threaded server in-process), and the pure parts: limit policy,
key hashing, the OpenAI mapping, the action merge."""

from __future__ import annotations

import threading

import pytest
import redis
import requests

from faas_llm.actions_store import ActionStore, bump_version
from faas_llm.activations import ActivationStore
from faas_llm.auth import AuthStore, Credentials
from faas_llm.errors import AuthError, ConflictError, RequestError, ThrottledError
from faas_llm.keys import Keys
from faas_llm.limits import AdmissionVerdict, Limiter, NamespaceLimits, decide, minute_of
from faas_llm.settings import Settings
from faas_llm.types import Exec, Invocation, Limits
from gateway import openai_mapping as oai
from gateway.protocol import ActionPut, InvokeQuery
from gateway.services.actions import build_action
from tests.gateway.conftest import Tenant, ThreadServer


def test_health_and_metrics_without_auth(thread_gateway: ThreadServer, guest: Tenant) -> None:
    base = thread_gateway.base
    assert requests.get(f"{base}/health").json() == {"status": "ok", "redis": True}
    for _ in range(3):
        requests.get(f"{base}/api/v1/namespaces", auth=guest.auth)
    requests.get(f"{base}/api/v1/namespaces")
    requests.put(f"{base}/api/v1/namespaces/_/actions/m", auth=guest.auth, json={"exec": {"kind": "llm", "model": "m"}})
    requests.post(f"{base}/api/v1/namespaces/_/actions/m", auth=guest.auth)
    text = requests.get(f"{base}/metrics").text
    assert 'faas_gateway_requests_total{method="GET",route="/api/v1/namespaces",status="200"} 3.0' in text
    assert 'faas_gateway_requests_total{method="GET",route="/api/v1/namespaces",status="401"} 1.0' in text
    assert 'faas_gateway_invoke_seconds_count{face="openwhisk",mode="nonblocking",outcome="accepted"} 1.0' in text
    assert requests.get(f"{base}/api/v1").json()["api_paths"] == ["/api/v1", "/v1"]


def test_health_is_503_when_redis_is_gone(settings: Settings) -> None:
    from faas_llm.redis_server import free_port

    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "gateway_port": free_port()})
    server = ThreadServer(dead)
    server.thread.start()
    try:
        r = requests.get(f"{server.base}/health", timeout=10)
        assert r.status_code == 503 and r.json()["redis"] is False and r.headers["Retry-After"] == "1"
        down = requests.get(f"{server.base}/api/v1/namespaces", auth=("a", "b"), timeout=10)
        assert down.status_code == 503 and down.headers["Retry-After"] == "1"
        assert down.json() == {"error": "The activation store is unreachable; retry later.",
                               "code": down.headers["X-Request-ID"]}
    finally:
        server.__exit__()


def test_limit_policy() -> None:
    limits = NamespaceLimits(invocations_per_minute=2, concurrent_invocations=1)
    assert decide(2, 1, limits).admitted
    rate = decide(3, 1, limits)
    assert rate.verdict is AdmissionVerdict.RATE
    assert rate.message == "Too many requests in the last minute (count: 3, allowed: 2)."
    conc = decide(1, 2, limits)
    assert conc.verdict is AdmissionVerdict.CONCURRENCY
    assert conc.message == "Too many concurrent requests in flight (count: 1, allowed: 1)."
    assert decide(5, 5, limits).verdict is AdmissionVerdict.RATE  # the rate limit is checked first


def test_limiter_admits_exactly_the_limit_under_contention(redis_client: redis.Redis, keys: Keys) -> None:
    limiter = Limiter(redis_client, keys, NamespaceLimits(1000, 5))
    admitted: list[str] = []

    def one(i: int) -> None:
        try:
            limiter.admit("ns", f"a{i}", expires_ms=10**13, now_ms=1000)
            admitted.append(f"a{i}")
        except ThrottledError:
            pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 5 and limiter.inflight_count("ns", 1000) == len(admitted)
    # expired in-flight entries stop counting
    limiter.admit("ns", "late", expires_ms=10**14, now_ms=10**13 + 1)
    assert limiter.inflight_count("ns", 10**13 + 1) == 1
    with pytest.raises(RequestError):
        limiter.set_limits("ns", invocations_per_minute=0)


@pytest.mark.parametrize("rate_limit", [1, 3])
@pytest.mark.parametrize("conc_limit", [1, 2])
@pytest.mark.parametrize("prior_rate", [0, 1, 3])
@pytest.mark.parametrize("prior_inflight", [0, 1, 2])
def test_admission_script_agrees_with_decide_and_queues_only_what_it_admits(
    redis_client: redis.Redis, keys: Keys, rate_limit: int, conc_limit: int, prior_rate: int, prior_inflight: int,
) -> None:
    """The Lua admission repeats decide(); whatever it admits is queued in the same call, a
    throttled invocation is neither queued nor left in flight."""
    limiter = Limiter(redis_client, keys, NamespaceLimits(60, 30))
    store = ActivationStore(redis_client, keys)
    limiter.set_limits("ns", invocations_per_minute=rate_limit, concurrent_invocations=conc_limit)
    now = 10**12
    if prior_rate:
        redis_client.set(keys.rate_window("ns", minute_of(now)), prior_rate)
    for i in range(prior_inflight):
        redis_client.zadd(keys.inflight("ns"), {f"old{i}": now + 60_000})
    inv = Invocation(activation_id="b" * 32, namespace="ns", action="act", action_version="0.0.1", subject="ns",
                     params={}, transaction_id="t", enqueued_ms=now, deadline_ms=now + 1000)
    expected = decide(prior_rate + 1, prior_inflight + 1, NamespaceLimits(rate_limit, conc_limit))
    queue = keys.action_queue("ns", "act")
    try:
        admitted = limiter.admit("ns", inv.activation_id, now + 60_000, now, queue=store.queue_write(inv))
    except ThrottledError as exc:
        assert not expected.admitted and str(exc) == expected.message
        assert redis_client.xlen(queue) == 0 and store.pending(inv.activation_id) is None
        assert redis_client.zscore(keys.inflight("ns"), inv.activation_id) is None
    else:
        assert expected.admitted and admitted.entry_id is not None
        (entry_id, fields), = redis_client.xrange(queue)
        assert entry_id == admitted.entry_id and ActivationStore.decode_message(fields) == inv
        assert store.pending(inv.activation_id) == inv and queue in redis_client.smembers(keys.queues_index())
        assert redis_client.zscore(keys.inflight("ns"), inv.activation_id) is not None


def test_new_limits_apply_to_the_next_admission(redis_client: redis.Redis, keys: Keys) -> None:
    """Limits are read in the admission itself: no cache to go stale across gateway processes."""
    gateway_side = Limiter(redis_client, keys, NamespaceLimits(60, 30))
    gateway_side.admit("ns", "a1", expires_ms=10**13, now_ms=1000)
    Limiter(redis_client, keys, NamespaceLimits(60, 30)).set_limits("ns", concurrent_invocations=1)
    with pytest.raises(ThrottledError, match="allowed: 1"):
        gateway_side.admit("ns", "a2", expires_ms=10**13, now_ms=1000)


def test_keys_are_hashed_and_verified(redis_client: redis.Redis, keys: Keys) -> None:
    store = AuthStore(redis_client, keys)
    store.create_namespace("ns")
    creds = store.create_key("ns")
    assert len(creds.secret) == 64 and Credentials.parse(str(creds)) == creds
    assert store.verify(creds).namespace == "ns"
    stored = redis_client.hgetall(keys.auth(creds.uuid))
    assert creds.secret not in stored.values() and stored["scheme"] == "sha256-salted"
    for bad in (Credentials(creds.uuid, "x" * 64), Credentials("nope", creds.secret)):
        with pytest.raises(AuthError):
            store.verify(bad)
    with pytest.raises(AuthError):
        Credentials.parse("no-colon")
    with pytest.raises(ConflictError):
        store.create_namespace("ns")


def test_action_store_conflicts_and_update_merge(redis_client: redis.Redis, keys: Keys) -> None:
    store = ActionStore(redis_client, keys)
    defaults = Limits(timeout=1000)
    body = ActionPut(exec={"kind": "llm", "model": "m"}, parameters=[{"key": "a", "value": 1}])
    created = store.put("ns", "x", lambda old: build_action("ns", "x", body, old, defaults))
    assert created.limits.timeout == 1000 and created.exec == Exec(kind="llm", model="m")
    with pytest.raises(ConflictError):
        store.put("ns", "x", lambda old: build_action("ns", "x", body, old, defaults))
    patch = ActionPut(limits={"memory": 256})
    updated = store.put("ns", "x", lambda old: build_action("ns", "x", patch, old, defaults), overwrite=True)
    assert updated.version == "0.0.2" and updated.limits.memory == 256 and updated.limits.timeout == 1000
    assert updated.parameters == created.parameters
    assert bump_version("1.2.9") == "1.2.10" and bump_version("odd") == "odd"


def test_invoke_query_parsing() -> None:
    q = InvokeQuery.from_args({"blocking": "true", "result": "false", "timeout": "500"}, 60_000)
    assert (q.blocking, q.result, q.timeout_ms) == (True, False, 500)
    with pytest.raises(RequestError, match=r"Timeout must be number of milliseconds up to 60000\."):
        InvokeQuery.from_args({"timeout": "60001"}, 60_000)


def test_openai_mapping_reads_the_runtimes_result() -> None:
    result = {"text": "hi", "finish_reason": "length", "token_ids": [1, 2],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "timings": {}}
    gen = oai.Generation.of(result)
    assert gen == oai.Generation("hi", "length", oai.Usage(3, 2))
    assert oai.Generation.of({"text": "x", "prompt_tokens": 4, "token_ids": [1]}).usage == oai.Usage(4, 1)
    assert oai.finish_reason("eos") == "stop" and oai.finish_reason(None) == "stop"
    body = oai.chat_body("a" * 32, "m", 1, gen)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
