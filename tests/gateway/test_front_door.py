"""One front door: one route table, served by the Flask app and by the thin WSGI layer under it.

Every route of the table is a Flask route with the same rule and method (and no other exists); the
WSGI layer matches the hot routes exactly as werkzeug does; and the two layers answer every request
alike, the same status, headers and body bytes (activation ids, request ids and times aside), the errors
after the submit and the metrics included, because both run the same handler. Requests the layer does
not read itself (chunked, non-ASCII query, too large) are Flask's, whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests
import werkzeug.exceptions

from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from faas_llm.redis_server import free_port
from faas_llm.settings import Settings
from gateway import create_app
from gateway.fastpath import query_args
from gateway.routes import ROUTES
from tests.gateway.conftest import Tenant, ThreadServer
from tests.gateway.consumer import QueueConsumer

HEX32 = re.compile(r"[0-9a-f]{32}")
VOLATILE = ("start", "end", "duration", "created", "waitTime")


@pytest.fixture
def pair(settings: Settings) -> Iterator[tuple[ThreadServer, ThreadServer]]:
    """The same gateway twice, on one Redis: with the WSGI layer for the hot routes and without it."""
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


@dataclass(frozen=True)
class Chunked:
    """A body sent with ``Transfer-Encoding: chunked`` (no ``Content-Length``)."""

    parts: tuple[bytes, ...]


CASES: list[tuple[str, str, dict[str, Any], Any, dict[str, str]]] = [
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
    # the handlers' own refusals: the same whichever layer serves them
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
    ("escaped query", "/api/v1/namespaces/_/actions/hello", {"blocking": "tr%75e", "x": "a+b"}, {}, {}),
    ("repeated query", "/api/v1/namespaces/_/actions/hello", {"blocking": ["true", "false"]}, {}, {}),
    ("escaped name", "/api/v1/namespaces/_/actions/hel%6Co", {"blocking": "true"}, {}, {}),
    ("trailing slash", "/v1/completions/", {}, {"model": "hello", "prompt": "x"}, {}),
    # not read by the WSGI layer: Flask answers the whole request
    ("chunked", "/api/v1/namespaces/_/actions/hello", {"blocking": "true"}, Chunked((b'{"prompt": ', b'"c"}')), {}),
    ("too large", "/api/v1/namespaces/_/actions/hello", {}, {"prompt": "x" * 2_000_000}, {}),
]
#: the cases the WSGI layer leaves to Flask (no hot route; or a body it does not read itself)
FLASK_ONLY = {"trailing slash", "chunked", "too large"}


def send(base: str, tenant: Tenant, path: str, query: dict[str, Any], body: Any,
         headers: dict[str, str]) -> requests.Response:
    bearer = {"Authorization": f"Bearer {tenant.api_key}"} if path.startswith("/v1/") else {}
    if "%" in path or any("%" in str(v) or "+" in str(v) for v in query.values()):  # sent as written
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        query = {}
    kwargs: dict[str, Any] = {"params": query, "headers": {**bearer, **headers},
                              "auth": None if bearer else tenant.auth}
    if isinstance(body, Chunked):
        return requests.post(base + path, data=iter(body.parts), **kwargs)
    if isinstance(body, bytes):
        return requests.post(base + path, data=body, **kwargs)
    return requests.post(base + path, **kwargs) if body is None else requests.post(base + path, json=body, **kwargs)


def test_the_route_table_is_the_apps(settings: Settings) -> None:
    """Flask serves exactly the table's routes, and the WSGI layer's rules match what werkzeug's do."""
    app = create_app(settings)
    try:
        served = {(rule.rule, m, rule.endpoint) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
                  for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
        assert served == {(r.rule, r.method, r.endpoint) for r in ROUTES}
        assert len({(r.method, r.rule) for r in ROUTES}) == len(ROUTES)
        adapter = app.url_map.bind("localhost")
        paths = ["/v1/completions", "/v1/chat/completions", "/v1/completions/", "/v1//completions",
                 "/api/v1/namespaces/_/actions/a", "/api/v1/namespaces/guest/actions/a-b.c@d",
                 "/api/v1/namespaces//actions/a", "/api/v1/namespaces/_/actions/", "/api/v1/namespaces/_/actions/a/",
                 "/api/v1/namespaces/_/actions/a/b", "/api/v1/namespaces/_/actions",
                 "/api/v1/namespaces/_/activations/a"]
        for path in paths:
            try:
                endpoint, args = adapter.match(path, method="POST")
            except werkzeug.exceptions.HTTPException:  # no route (404, 405) or a redirect
                endpoint, args = None, {}
            ours = [(r.endpoint, m.groupdict()) for r in ROUTES if r.method == "POST" and (m := r.pattern.match(path))]
            assert ours == ([(endpoint, args)] if endpoint else []), path
    finally:
        app.extensions["faas_llm_gateway"].redis.close()


def test_query_args_as_werkzeug_reads_them() -> None:
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    for query in ("", "a=1&b=2", "a=1&a=2", "a", "a=&b", "&&a=1", "a=b=c", "a=%41+b", "a=%ff", "x;y=1", "a=1%3B2",
                  "=1", "=", "&", "a==", "blocking=true&result=true&timeout=5"):
        want = Request(EnvironBuilder(query_string=query).get_environ()).args
        assert query_args(query) == {k: want[k] for k in want}, query
    assert query_args("a=\xe9") is None  # not ASCII: Flask decodes it


def test_both_layers_answer_alike(
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
        assert (fast_served(fast) > before) == (name not in FLASK_ONLY), name


def test_errors_after_the_submit_alike(
    pair: tuple[ThreadServer, ThreadServer], guest: Tenant, consumer: QueueConsumer, redis_client: redis.Redis,
    keys: Keys,
) -> None:
    """429 (the script counted) and a deleted action's 404, after the submit: the one error mapping answers
    in both layers (the same body, code = the request id) and the metrics count them by route."""
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
        assert (fast_served(fast) > before) == (server is fast)
        answers.append(r.json()["error"])
    assert answers[0].split("(")[0] == answers[1].split("(")[0]
    Limiter(redis_client, keys, NamespaceLimits(1, 1)).clear_limits("guest")
    # deleted behind the workers' caches: the script finds it gone -> 404
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
