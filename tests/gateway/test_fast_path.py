"""The warm invoke routes served by gateway/fastpath.py answer exactly as the Flask routes do: the same
status, headers and body bytes (activation ids, request ids and times aside), the same metrics, and
every case the fast path does not take (or that fails after the invocation was submitted) is Flask's."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from faas_llm.redis_server import free_port
from faas_llm.settings import Settings
from tests.gateway.conftest import Tenant, ThreadServer
from tests.gateway.consumer import QueueConsumer

HEX32 = re.compile(r"[0-9a-f]{32}")
VOLATILE = ("start", "end", "duration", "created", "waitTime")


@pytest.fixture
def pair(settings: Settings) -> Iterator[tuple[ThreadServer, ThreadServer]]:
    """The same gateway twice, on one Redis: with the fast path and without it."""
    with ThreadServer(settings.model_copy(update={"gateway_port": free_port()})) as fast, \
            ThreadServer(settings.model_copy(update={"gateway_port": free_port(), "gateway_fast_path": False})) as slow:
        yield fast, slow


def normal(text: str) -> Any:
    """A body with ids and times replaced, so the two answers of one request compare equal."""
    value = json.loads(HEX32.sub("<id>", text))

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ("<t>" if k in VOLATILE else walk(x)) for k, x in v.items()}
        if isinstance(v, list):
            if len(v) and all(isinstance(x, dict) and x.keys() == {"key", "value"} for x in v):
                return [{"key": x["key"], "value": "<t>" if x["key"] in VOLATILE else walk(x["value"])} for x in v]
            return [walk(x) for x in v]
        return v

    return walk(value)


def shape(text: str) -> str:
    """The body's bytes with ids and numbers blanked."""
    return re.sub(r"\d+", "0", HEX32.sub("<id>", text))


def fast_served(server: ThreadServer) -> int:
    return int(server.app.wsgi_app.served)  # type: ignore[attr-defined]


CASES: list[tuple[str, str, dict[str, str], Any, dict[str, str]]] = [
    # (name, path, query, body, extra headers)
    ("blocking", "/api/v1/namespaces/_/actions/hello", {"blocking": "true"}, {"prompt": "a b", "max_tokens": 3}, {}),
    ("blocking own ns", "/api/v1/namespaces/guest/actions/hello", {"blocking": "true"}, {"prompt": "x"}, {}),
    ("result", "/api/v1/namespaces/_/actions/hello", {"blocking": "true", "result": "true"}, {"prompt": "q"}, {}),
    ("empty body", "/api/v1/namespaces/_/actions/hello", {"blocking": "true"}, None, {}),
    ("nonblocking", "/api/v1/namespaces/_/actions/hello", {}, {"prompt": "a"}, {}),
    ("app error", "/api/v1/namespaces/_/actions/fails", {"blocking": "true"}, {}, {}),
    ("timeout", "/api/v1/namespaces/_/actions/slow", {"blocking": "true", "timeout": "50"}, {}, {}),
    ("completion", "/v1/completions", {}, {"model": "hello", "prompt": "one two", "max_tokens": 2}, {}),
    ("completion echo", "/v1/completions", {}, {"model": "hello", "prompt": "é", "max_tokens": 1, "echo": True}, {}),
    ("chat", "/v1/chat/completions", {},
     {"model": "hello", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, {}),
    ("completion app error", "/v1/completions", {}, {"model": "fails", "prompt": "x"}, {}),
    ("completion too long", "/v1/completions", {}, {"model": "toolong", "prompt": "x"}, {}),
    # not taken by the fast path: Flask answers
    ("bad query", "/api/v1/namespaces/_/actions/hello", {"blocking": "maybe"}, {}, {}),
    ("bad timeout", "/api/v1/namespaces/_/actions/hello", {"blocking": "true", "timeout": "0"}, {}, {}),
    ("bad json", "/api/v1/namespaces/_/actions/hello", {}, b"{nope", {"Content-Type": "application/json"}),
    ("NaN", "/api/v1/namespaces/_/actions/hello", {}, b'{"a": NaN}', {"Content-Type": "application/json"}),
    ("array", "/api/v1/namespaces/_/actions/hello", {}, [1], {}),
    ("other ns", "/api/v1/namespaces/other/actions/hello", {}, {}, {}),
    ("missing", "/api/v1/namespaces/_/actions/nope", {"blocking": "true"}, {}, {}),
    ("completion missing", "/v1/completions", {}, {"model": "nope", "prompt": "x"}, {}),
    ("completion bad", "/v1/completions", {}, {"model": "hello", "prompt": "x", "temperature": 9}, {}),
    ("completion two prompts", "/v1/completions", {}, {"model": "hello", "prompt": ["a", "b"]}, {}),
    ("completion empty", "/v1/completions", {}, None, {}),
]


def send(base: str, tenant: Tenant, path: str, query: dict[str, str], body: Any,
         headers: dict[str, str]) -> requests.Response:
    auth = {"Authorization": f"Bearer {tenant.api_key}"} if path.startswith("/v1/") else {}
    if isinstance(body, bytes):
        return requests.post(base + path, params=query, data=body, headers={**auth, **headers}, auth=None
                             if auth else tenant.auth)
    if body is None:
        return requests.post(base + path, params=query, headers=auth, auth=None if auth else tenant.auth)
    return requests.post(base + path, params=query, json=body, headers=auth, auth=None if auth else tenant.auth)


def test_fast_path_answers_as_flask_does(
    pair: tuple[ThreadServer, ThreadServer], guest: Tenant, consumer: QueueConsumer, redis_client: redis.Redis,
    keys: Keys,
) -> None:
    fast, slow = pair
    s = requests.Session()
    s.auth = guest.auth
    for name, defaults in (("hello", []), ("fails", [{"key": "_fail", "value": "application"}]),
                           ("toolong", [{"key": "_fail", "value": "request"}]),
                           ("slow", [{"key": "_delay_ms", "value": 500}])):
        r = s.put(f"{fast.base}/api/v1/namespaces/_/actions/{name}",
                  json={"exec": {"kind": "llm", "model": "tiny"}, "parameters": defaults})
        assert r.status_code == 200, r.text
    # warm both: each worker caches the key (both faces) and the actions
    for server in (fast, slow):
        for name in ("hello", "fails", "toolong", "slow"):
            send(server.base, guest, f"/api/v1/namespaces/_/actions/{name}", {}, {}, {})
        send(server.base, guest, "/v1/completions", {}, {"model": "hello", "prompt": "w", "max_tokens": 1}, {})
    for name, path, query, body, headers in CASES:
        before = fast_served(fast)
        got = send(fast.base, guest, path, query, body, headers)
        want = send(slow.base, guest, path, query, body, headers)
        assert got.status_code == want.status_code, (name, got.text, want.text)
        assert got.headers.keys() - {"Date"} == want.headers.keys() - {"Date"}, name
        for header in ("Content-Type", "WWW-Authenticate"):
            assert got.headers.get(header) == want.headers.get(header), (name, header)
        for header in ("X-Request-ID", "x-openwhisk-activation-id"):
            assert (HEX32.fullmatch(got.headers.get(header, "")) is None) == \
                   (HEX32.fullmatch(want.headers.get(header, "")) is None), (name, header)
        assert normal(got.text) == normal(want.text), name
        assert shape(got.text) == shape(want.text), name  # key order, separators, the final newline
        if got.headers.get("x-openwhisk-activation-id") and path.startswith("/api/") and "result" not in query \
                and got.status_code in (200, 502):
            stored = redis_client.get(keys.activation(got.headers["x-openwhisk-activation-id"]))
            assert got.text == stored, name  # the record as stored, byte for byte
        taken = fast_served(fast) > before
        flask_only = CASES.index((name, path, query, body, headers)) >= 12
        assert taken != flask_only or got.status_code >= 400, (name, taken)
    assert fast_served(fast) >= 8


def test_fast_path_errors_after_submit_are_flasks(
    pair: tuple[ThreadServer, ThreadServer], guest: Tenant, consumer: QueueConsumer, redis_client: redis.Redis,
    keys: Keys,
) -> None:
    """429 (the script counted), a deleted action's 404 and Redis' own errors after the submit: the app's
    handlers answer (the same body, code = the request id) and the metrics count them by route."""
    fast, slow = pair
    s = requests.Session()
    s.auth = guest.auth
    r = s.put(f"{fast.base}/api/v1/namespaces/_/actions/hello", json={"exec": {"kind": "llm", "model": "tiny"}})
    assert r.status_code == 200
    for server in (fast, slow):
        assert s.post(f"{server.base}/api/v1/namespaces/_/actions/hello", json={}).status_code == 202
    Limiter(redis_client, keys, NamespaceLimits(1, 1)).set_limits("guest", invocations_per_minute=1)
    answers = []
    for server in (fast, slow):
        before = fast_served(fast)
        r = s.post(f"{server.base}/api/v1/namespaces/_/actions/hello", json={})
        assert r.status_code == 429, r.text
        assert r.json()["code"] == r.headers["X-Request-ID"]
        assert fast_served(fast) == before  # an error is never the fast path's own answer
        answers.append(r.json()["error"])
    assert answers[0].split("(")[0] == answers[1].split("(")[0]
    Limiter(redis_client, keys, NamespaceLimits(1, 1)).clear_limits("guest")
    # deleted behind the workers' caches: the script finds it gone -> 404 from the app's handler
    redis_client.delete(keys.action("guest", "hello"))
    for server in (fast, slow):
        r = s.post(f"{server.base}/api/v1/namespaces/_/actions/hello", params={"blocking": "true"}, json={})
        assert r.status_code == 404, r.text
        assert r.json() == {"error": "The requested resource does not exist.", "code": r.headers["X-Request-ID"]}
    metrics = requests.get(f"{fast.base}/metrics").text
    rule = "/api/v1/namespaces/<namespace>/actions/<name>"
    for status in ("202", "429", "404"):
        assert re.search(rf'faas_gateway_requests_total\{{[^}}]*method="POST",route="{re.escape(rule)}",'
                         rf'status="{status}"\}} [1-9]', metrics) or \
            re.search(rf'faas_gateway_requests_total\{{route="{re.escape(rule)}",method="POST",'
                      rf'status="{status}"\}} [1-9]', metrics), (status, metrics[:3000])
