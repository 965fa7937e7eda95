"""A store that is briefly unavailable is a 503 with ``Retry-After``, never a 500 (issue 24, the gateway).

Each test runs the gateway on a redis-server of its own, which it kills (``kill -9``), stops
(``SIGSTOP``), turns into a read-only replica, keeps ``BUSY`` with a script or restarts into a slow
``LOADING``: every route answers 503, ``Retry-After`` and the face's JSON error (OpenWhisk's
``{"error", "code"}``, OpenAI's ``{"error": {...}}``), and serves again once Redis does. A blocking invoke
already queued when Redis goes away keeps waiting for its record: it gets the record if Redis comes back
within its wait, else 202 and its activation id (it was accepted; a 503 would invite a second run). A
stream whose status was sent ends with the error event.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from faas_llm.redis_server import RedisServer, find_redis_server, free_port
from faas_llm.settings import Settings
from tests.gateway.conftest import Tenant, ThreadServer, gunicorn_process, make_tenant
from tests.gateway.consumer import QueueConsumer

NS = "/api/v1/namespaces/_"
#: one request per route that touches Redis: (method, path, JSON body)
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/namespaces", None),
    ("GET", f"{NS}/actions", None),
    ("PUT", f"{NS}/actions/other?overwrite=true", {"exec": {"kind": "llm", "model": "tiny"}}),
    ("GET", f"{NS}/actions/hello", None),
    ("DELETE", f"{NS}/actions/hello", None),
    ("POST", f"{NS}/actions/hello", {"prompt": "a"}),
    ("POST", f"{NS}/actions/hello?blocking=true", {"prompt": "a"}),
    ("GET", f"{NS}/activations", None),
    ("GET", f"{NS}/activations/0123456789abcdef0123456789abcdef", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/hello", None),
    ("POST", "/v1/completions", {"model": "hello", "prompt": "a", "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"model": "hello", "messages": [{"role": "user", "content": "a"}]}),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server (AOF on) this test may kill, stop and restart."""
    server = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
        server.cleanup()


@pytest.fixture
def client(store: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(store.url, decode_responses=True)
    yield c
    c.close()


@pytest.fixture
def tenant(client: redis.Redis) -> Tenant:
    keys = Keys(Settings().key_prefix)
    Limiter(client, keys, NamespaceLimits(1, 1)).set_limits("guest", invocations_per_minute=10**6,
                                                            concurrent_invocations=10**6)
    return make_tenant(client, keys, "guest")


def gateway_settings(store: RedisServer, tmp_path: Path) -> Settings:
    return Settings(redis_url=store.url, data_dir=tmp_path / "data", gateway_port=free_port(), gateway_workers=1,
                    gateway_threads=32, log_level="WARNING")


def send(base: str, tenant: Tenant, method: str, path: str, body: Any, timeout: float = 60) -> requests.Response:
    headers = {"Authorization": f"Bearer {tenant.api_key}"} if path.startswith("/v1/") else {}
    return requests.request(method, base + path, json=body, headers=headers,
                            auth=None if headers else tenant.auth, timeout=timeout)


def assert_unavailable(r: requests.Response, path: str) -> None:
    assert r.status_code == 503, (path, r.status_code, r.text)
    assert r.headers["Retry-After"] == "1", path
    body = r.json()
    if path.startswith("/v1/"):
        assert body["error"]["type"] == "server_error" and body["error"]["code"] == "store_unavailable", body
        assert body["error"]["message"].startswith("The activation store "), body
    else:
        assert body["code"] == r.headers["X-Request-ID"], body
        assert body["error"].startswith("The activation store ") and body["error"].endswith("; retry later."), body


def every_route_is_unavailable(base: str, tenant: Tenant) -> None:
    """All routes at once (a stalled Redis answers each only after the client's socket timeouts)."""
    with ThreadPoolExecutor(len(ROUTES)) as pool:
        answers = list(pool.map(lambda route: send(base, tenant, *route), ROUTES))
    for (_, path, _), r in zip(ROUTES, answers, strict=True):
        assert_unavailable(r, path)
    health = requests.get(f"{base}/health", timeout=60)
    assert health.status_code == 503 and health.headers["Retry-After"] == "1"


def serves(base: str, tenant: Tenant) -> None:
    """Serving again: a blocking invoke through the queue, and the OpenAI face."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = send(base, tenant, "POST", f"{NS}/actions/hello?blocking=true", {"prompt": "back", "max_tokens": 1})
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text  # never a 500 while it comes back
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert send(base, tenant, "GET", "/v1/models/hello", None).status_code == 200


def warm(base: str, tenant: Tenant) -> None:
    """The action exists, and this worker holds the key and the action (the hot path's caches)."""
    assert send(base, tenant, "PUT", f"{NS}/actions/hello", {"exec": {"kind": "llm", "model": "tiny"}}).ok
    assert send(base, tenant, "PUT", f"{NS}/actions/gated", {
        "exec": {"kind": "llm", "model": "tiny"}, "parameters": [{"key": "_gate", "value": "g"}]}).ok
    for path, body in ((f"{NS}/actions/hello?blocking=true", {"prompt": "w"}),
                       ("/v1/completions", {"model": "hello", "prompt": "w", "max_tokens": 1})):
        assert send(base, tenant, "POST", path, body).status_code == 200


def in_flight(base: str, tenant: Tenant, consumer: QueueConsumer, timeout_ms: int) -> tuple[threading.Thread,
                                                                                           list[requests.Response]]:
    """A blocking invoke of ``gated`` that a consumer holds (the record comes once the gate opens)."""
    got: list[requests.Response] = []
    seen = len(consumer.seen)
    thread = threading.Thread(target=lambda: got.append(send(
        base, tenant, "POST", f"{NS}/actions/gated?blocking=true&timeout={timeout_ms}", {"prompt": "held"}, 90)))
    thread.start()
    deadline = time.monotonic() + 10
    while len(consumer.seen) == seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(consumer.seen) > seen, "the invocation was not taken"
    return thread, got


def test_kill9_of_redis_under_gunicorn(store: RedisServer, client: redis.Redis, tenant: Tenant,
                                       tmp_path: Path) -> None:
    consumer = QueueConsumer(store.url, Keys(Settings().key_prefix)).start()
    with gunicorn_process(gateway_settings(store, tmp_path), tmp_path / "gunicorn.log") as (base, _proc):
        try:
            warm(base, tenant)
            held, answer = in_flight(base, tenant, consumer, timeout_ms=4000)
            stream = requests.post(f"{base}/v1/chat/completions", stream=True, timeout=60,
                                   headers={"Authorization": f"Bearer {tenant.api_key}"},
                                   json={"model": "gated", "messages": [{"role": "user", "content": "s"}],
                                         "stream": True, "max_tokens": 3})
            events = (line[6:] for line in stream.iter_lines() if line.startswith(b"data: "))
            assert "role" in next(events).decode() and "content" in next(events).decode()  # held after a token
            store.stop(kill=True)
            # the stream's status was sent: it ends with the error event, then [DONE]
            error = json.loads(next(events))["error"]
            assert error["code"] == "store_unavailable" and error["type"] == "server_error", error
            assert next(events) == b"[DONE]"
            every_route_is_unavailable(base, tenant)
            held.join(timeout=60)
            # accepted before Redis went: its wait ran out with Redis still away -> 202 and its id
            assert answer[0].status_code == 202, answer[0].text
            activation_id = answer[0].json()["activationId"]
            assert answer[0].headers["x-openwhisk-activation-id"] == activation_id
            store.start()  # the same port and AOF file
            serves(base, tenant)
            consumer.open_gate("g")  # the held activation finishes now: its record is there to read
            deadline = time.monotonic() + 20
            while (r := send(base, tenant, "GET", f"{NS}/activations/{activation_id}", None)).status_code == 404 \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            assert r.status_code == 200 and r.json()["response"]["success"], r.text
        finally:
            consumer.stop()
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_a_stalled_redis_sigstop_under_gunicorn(store: RedisServer, client: redis.Redis, tenant: Tenant,
                                                tmp_path: Path) -> None:
    """Stopped for ~12 s (over redis-py's 5 s socket timeout, twice): the requests answer 503 once their
    reads time out; a blocking invoke that waits longer than the stall gets its record."""
    consumer = QueueConsumer(store.url, Keys(Settings().key_prefix)).start()
    with gunicorn_process(gateway_settings(store, tmp_path), tmp_path / "gunicorn.log") as (base, _proc):
        try:
            warm(base, tenant)
            held, answer = in_flight(base, tenant, consumer, timeout_ms=60_000)
            consumer.open_gate("g")  # the consumer now waits on the stopped Redis to store the record
            assert store.proc is not None
            store.proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                every_route_is_unavailable(base, tenant)
            finally:
                time.sleep(max(0.0, 12 - (time.monotonic() - stopped)))
                store.proc.send_signal(signal.SIGCONT)
            held.join(timeout=90)
            assert answer[0].status_code == 200, answer[0].text  # the wait outlived the stall
            assert answer[0].json()["response"]["success"]
            serves(base, tenant)
        finally:
            consumer.stop()
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def gateway(store: RedisServer, tmp_path: Path) -> Iterator[ThreadServer]:
    """The in-process app (werkzeug's threaded server, the hot routes through the WSGI layer)."""
    with ThreadServer(gateway_settings(store, tmp_path)) as server:
        yield server


def test_readonly_replica(store: RedisServer, client: redis.Redis, tenant: Tenant, gateway: ThreadServer) -> None:
    """A Redis turned replica (of a master that is not there) keeps serving reads and refuses writes:
    the routes that write are 503, those that read still answer."""
    base = gateway.base
    assert send(base, tenant, "PUT", f"{NS}/actions/hello", {"exec": {"kind": "llm", "model": "tiny"}}).ok
    client.replicaof("127.0.0.1", str(free_port()))
    try:
        for method, path, body in ((("POST", f"{NS}/actions/hello", {})), ("POST", "/v1/completions",
                                   {"model": "hello", "prompt": "a"}), ("DELETE", f"{NS}/actions/hello", None)):
            assert_unavailable(send(base, tenant, method, path, body), path)
        assert send(base, tenant, "GET", f"{NS}/actions/hello", None).status_code == 200
    finally:
        client.replicaof("NO", "ONE")
    assert send(base, tenant, "POST", f"{NS}/actions/hello", {}).status_code == 202


def test_busy_with_a_script(store: RedisServer, client: redis.Redis, tenant: Tenant, gateway: ThreadServer) -> None:
    base = gateway.base
    assert send(base, tenant, "PUT", f"{NS}/actions/hello", {"exec": {"kind": "llm", "model": "tiny"}}).ok
    client.config_set("busy-reply-threshold", 50)
    looping = redis.Redis.from_url(store.url, socket_timeout=60)
    killed: list[Exception] = []

    def spin_forever() -> None:
        try:
            looping.eval("while true do end", 0)
        except redis.ResponseError as exc:  # SCRIPT KILL
            killed.append(exc)

    spin = threading.Thread(target=spin_forever)
    spin.start()
    try:
        time.sleep(0.3)
        for method, path, body in ROUTES:
            assert_unavailable(send(base, tenant, method, path, body), path)
    finally:
        killer = redis.Redis.from_url(store.url)
        killer.script_kill()
        killer.close()
        spin.join(timeout=10)
        looping.close()
    assert killed
    assert send(base, tenant, "POST", f"{NS}/actions/hello", {}).status_code == 202


def test_loading_its_data_set(store: RedisServer, client: redis.Redis, tenant: Tenant, gateway: ThreadServer,
                              tmp_path: Path) -> None:
    """Restarted with its AOF and loading slowly (``key-load-delay``): ``LOADING`` is 503 until loaded."""
    base = gateway.base
    assert send(base, tenant, "PUT", f"{NS}/actions/hello", {"exec": {"kind": "llm", "model": "tiny"}}).ok
    client.eval("for i = 1, 20000 do redis.call('set', 'filler:' .. i, i) end", 0)
    store.stop()  # SIGTERM: the AOF is complete
    log = tmp_path / "loading.log"
    loading = subprocess.Popen(  # ~8 s of loading: 20000 keys, 400 us each
        [find_redis_server(), "--port", str(store.port), "--bind", store.host, "--dir", str(store.data_dir),
         "--save", "", "--appendonly", "yes", "--key-load-delay", "400", "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                pytest.fail("the data set loaded before a request was tried: raise key-load-delay")
            except redis.BusyLoadingError:
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        every_route_is_unavailable(base, tenant)  # (each answer takes a while: Redis serves slowly as it loads)
        assert "Ready to accept" not in log.read_text(), "loaded meanwhile: raise key-load-delay"
        while "Ready to accept" not in log.read_text() and time.monotonic() < deadline + 30:
            time.sleep(0.1)
        assert send(base, tenant, "POST", f"{NS}/actions/hello", {}).status_code == 202
    finally:
        loading.terminate()
        loading.wait(timeout=30)
