"""The invoke routes take a key this worker verified before without reading it, and the admission
script confirms it in the round trip that queues the invocation: a revoked key is refused (401,
nothing queued) at the very next request, and 401 still comes before the request's own errors
(400 body, 404 action, 403 namespace, 429 limits), as when the key is read first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import requests

from faas_llm.activations import ActivationStore
from faas_llm.auth import AuthStore, Credentials, KeyCheck
from faas_llm.errors import AuthError
from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits, minute_of
from faas_llm.types import Invocation
from tests.gateway.conftest import Tenant, ThreadServer
from tests.gateway.consumer import QueueConsumer


@pytest.fixture
def session(thread_gateway: ThreadServer, guest: Tenant) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.auth = guest.auth
        yield s


def invoke_url(base: str, name: str = "hello", namespace: str = "_") -> str:
    return f"{base}/api/v1/namespaces/{namespace}/actions/{name}"


def put_action(base: str, session: requests.Session, name: str = "hello") -> None:
    r = session.put(invoke_url(base, name), json={"exec": {"kind": "llm", "model": "tiny"}})
    assert r.status_code == 200, r.text


def queued(client: redis.Redis, keys: Keys, name: str = "hello") -> int:
    return int(client.xlen(keys.action_queue("guest", name)))


def test_revoked_key_is_refused_at_the_next_invoke(
    thread_gateway: ThreadServer, session: requests.Session, guest: Tenant, redis_client: redis.Redis, keys: Keys,
    consumer: QueueConsumer,
) -> None:
    base = thread_gateway.base
    put_action(base, session)
    for _ in range(2):  # the second is served from the worker's credential cache
        r = session.post(invoke_url(base), params={"blocking": "true"}, json={"prompt": "a", "max_tokens": 1})
        assert r.status_code == 200, r.text
    basic = requests.Request("GET", base, auth=guest.auth).prepare().headers["Authorization"]
    assert thread_gateway.app.extensions["faas_llm_gateway"].credentials.get(basic) is not None
    AuthStore(redis_client, keys).delete_key(guest.uuid)
    before = len(consumer.seen)
    for path, body in ((invoke_url(base), {}), (f"{base}/v1/completions", {"model": "hello", "prompt": "a"}),
                       (f"{base}/v1/chat/completions",
                        {"model": "hello", "messages": [{"role": "user", "content": "a"}]})):
        r = session.post(path, json=body, headers={"Authorization": f"Bearer {guest.api_key}"}
                         if path.startswith(f"{base}/v1/") else None)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"] == 'Basic realm="OpenWhisk secure realm"'
    r = session.post(invoke_url(base), json={})
    assert r.status_code == 401
    assert r.json()["error"] == "The supplied authentication is invalid"
    assert len(consumer.seen) == before
    assert queued(redis_client, keys) == before  # nothing queued for the revoked key


@pytest.mark.parametrize("case", ["bad json", "not an object", "missing action", "other namespace", "throttled",
                                  "openai bad body", "openai missing model"])
def test_revoked_key_is_401_before_the_requests_own_error(
    case: str, thread_gateway: ThreadServer, session: requests.Session, guest: Tenant, redis_client: redis.Redis,
    keys: Keys, consumer: QueueConsumer,
) -> None:
    base = thread_gateway.base
    put_action(base, session)
    bearer = {"Authorization": f"Bearer {guest.api_key}"}
    # cache the key on both faces
    assert session.post(invoke_url(base), json={}).status_code == 202
    assert session.post(f"{base}/v1/completions", json={"model": "hello", "prompt": "a", "max_tokens": 1},
                        headers=bearer).status_code == 200
    requests_by_case = {
        "bad json": lambda: session.post(invoke_url(base), data=b"{not json",
                                         headers={"Content-Type": "application/json"}),
        "not an object": lambda: session.post(invoke_url(base), json=[1, 2]),
        "missing action": lambda: session.post(invoke_url(base, "nope"), json={}),
        "other namespace": lambda: session.post(invoke_url(base, namespace="someone-else"), json={}),
        "throttled": lambda: session.post(invoke_url(base), json={}),
        "openai bad body": lambda: session.post(f"{base}/v1/completions", json={"model": "hello"}, headers=bearer),
        "openai missing model": lambda: session.post(f"{base}/v1/completions", json={"model": "nope", "prompt": "a"},
                                                     headers=bearer),
    }
    expected_while_valid = {"bad json": 400, "not an object": 400, "missing action": 404, "other namespace": 403,
                            "throttled": 429, "openai bad body": 400, "openai missing model": 404}
    limiter = Limiter(redis_client, keys, NamespaceLimits(10**6, 10**6))
    if case == "throttled":
        limiter.set_limits("guest", invocations_per_minute=1)
    # while the key is valid: the request's own error (the key served from the cache)
    assert requests_by_case[case]().status_code == expected_while_valid[case]
    AuthStore(redis_client, keys).delete_key(guest.uuid)
    r = requests_by_case[case]()
    assert r.status_code == 401, (case, r.status_code, r.text)
    assert r.headers["WWW-Authenticate"] == 'Basic realm="OpenWhisk secure realm"'
    if "openai" in case:
        assert r.json()["error"] == {"message": "The supplied authentication is invalid",
                                     "type": "authentication_error", "code": "auth"}
    else:
        assert r.json()["error"] == "The supplied authentication is invalid"


def test_wrong_secret_for_a_cached_uuid_is_refused(
    thread_gateway: ThreadServer, session: requests.Session, guest: Tenant,
) -> None:
    base = thread_gateway.base
    put_action(base, session)
    assert session.post(invoke_url(base), json={}).status_code == 202
    wrong = guest.secret[:-1] + ("0" if guest.secret[-1] != "0" else "1")
    r = requests.post(invoke_url(base), json={}, auth=(guest.uuid, wrong))
    assert r.status_code == 401
    assert session.post(invoke_url(base), json={}).status_code == 202


def test_admission_script_refuses_a_revoked_key_and_writes_nothing(
    redis_client: redis.Redis, keys: Keys, guest: Tenant,
) -> None:
    store = AuthStore(redis_client, keys)
    identity, check = store.verify_checked(Credentials(guest.uuid, guest.secret))
    assert identity.namespace == "guest" and check == KeyCheck(keys.auth(guest.uuid), check.key_hash)
    activations = ActivationStore(redis_client, keys)
    limiter = Limiter(redis_client, keys, NamespaceLimits(10**6, 10**6))
    inv = Invocation(activation_id="a" * 32, namespace="guest", action="hello", action_version="0.0.1",
                     subject="guest", params={}, transaction_id="t", enqueued_ms=1000, deadline_ms=2000)
    assert limiter.admit("guest", inv.activation_id, 10**13, 1000, queue=activations.queue_write(inv),
                         key_check=check).entry_id
    store.delete_key(guest.uuid)
    inv2 = inv.model_copy(update={"activation_id": "b" * 32})
    with pytest.raises(AuthError):
        limiter.admit("guest", inv2.activation_id, 10**13, 1000, queue=activations.queue_write(inv2), key_check=check)
    with pytest.raises(AuthError):  # checked before the action: a stale action does not hide it
        limiter.admit_if_current("guest", inv2.activation_id, 10**13, 1000, activations.queue_write(inv2),
                                 keys.action("guest", "hello"), "0" * 40, check)
    assert redis_client.xlen(keys.action_queue("guest", "hello")) == 1
    assert redis_client.get(keys.rate_window("guest", minute_of(1000))) == "1"  # the refused ones not counted
    assert redis_client.zcard(keys.inflight("guest")) == 1
    assert not redis_client.exists(keys.activation_pending(inv2.activation_id))
