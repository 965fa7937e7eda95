"""Invoking actions and reading activations under real gunicorn, completed by the test consumer."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import redis
import requests

from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from tests.gateway.conftest import OW, Tenant
from tests.gateway.consumer import QueueConsumer, expected_words

HEX32 = set("0123456789abcdef")


def is_activation_id(value: str) -> bool:
    return len(value) == 32 and set(value) <= HEX32


def test_nonblocking_invoke_is_202_then_the_record_appears(ow: OW, consumer: QueueConsumer) -> None:
    ow.put_action("gen", parameters=[{"key": "max_tokens", "value": 3}, {"key": "temperature", "value": 0}])
    r = ow.invoke("gen", {"prompt": "hi", "temperature": 0.5})
    assert r.status_code == 202
    aid = r.json()["activationId"]
    assert is_activation_id(aid) and r.headers["x-openwhisk-activation-id"] == aid
    record = None
    for _ in range(100):
        got = ow.session.get(ow.url(f"activations/{aid}"))
        if got.status_code == 200:
            record = got.json()
            break
        assert got.status_code == 404  # 404 until stored
        time.sleep(0.05)
    assert record is not None
    # action parameters are defaults; the invocation's params win
    assert record["response"]["result"]["params"] == {"max_tokens": 3, "temperature": 0.5, "prompt": "hi"}
    assert record["response"]["result"]["text"] == " ".join(expected_words("hi", 3))
    assert consumer.seen[0].subject == "guest" and consumer.seen[0].activation_id == aid


def test_blocking_invoke_returns_the_full_record(ow: OW, consumer: QueueConsumer) -> None:
    ow.put_action("gen")
    r = ow.invoke("gen", {"prompt": "x", "max_tokens": 2}, blocking=True)
    assert r.status_code == 200, r.text
    record = r.json()
    aid = r.headers["x-openwhisk-activation-id"]
    assert record["activationId"] == aid and record["namespace"] == "guest" and record["name"] == "gen"
    assert record["response"] == {**record["response"], "status": "success", "statusCode": 0, "success": True}
    for field in ("start", "end", "duration", "logs", "annotations", "subject", "version",
                  "coldStart", "loadTier", "loadTime", "node", "timeToFirstToken"):
        assert field in record
    assert {"key": "path", "value": "guest/gen"} in record["annotations"]


def test_blocking_result_true_returns_only_the_result(ow: OW, consumer: QueueConsumer) -> None:
    ow.put_action("gen")
    r = ow.invoke("gen", {"prompt": "x", "max_tokens": 2}, blocking=True, result=True)
    assert r.status_code == 200
    assert r.json()["text"] == " ".join(expected_words("x", 2))
    assert is_activation_id(r.headers["x-openwhisk-activation-id"])


def test_failed_activations_are_502_or_500(ow: OW, consumer: QueueConsumer) -> None:
    for fail, status, code in (("application", 502, 1), ("developer", 502, 2), ("internal", 500, 3)):
        ow.put_action(f"f-{fail}", parameters=[{"key": "_fail", "value": fail}])
        full = ow.invoke(f"f-{fail}", blocking=True)
        assert full.status_code == status, fail
        assert full.json()["response"]["statusCode"] == code and full.json()["response"]["success"] is False
        only = ow.invoke(f"f-{fail}", blocking=True, result=True)
        assert only.status_code == status and "error" in only.json()


def test_blocking_wait_that_runs_out_is_202_and_the_record_comes_later(ow: OW, consumer: QueueConsumer) -> None:
    ow.put_action("slow", parameters=[{"key": "_delay_ms", "value": 1500}])
    r = ow.invoke("slow", {"max_tokens": 1}, blocking=True, timeout=200)
    assert r.status_code == 202
    aid = r.json()["activationId"]
    assert r.headers["x-openwhisk-activation-id"] == aid
    assert ow.session.get(ow.url(f"activations/{aid}")).status_code == 404
    deadline = time.monotonic() + 20
    while ow.session.get(ow.url(f"activations/{aid}")).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_timeout_must_be_an_integer_up_to_the_maximum(ow: OW) -> None:
    ow.put_action("gen")
    for bad in ("0", "60001", "abc", "1.5", "-5"):
        r = ow.invoke("gen", blocking=True, timeout=bad)
        assert r.status_code == 400, bad
        assert r.json()["error"] == "Timeout must be number of milliseconds up to 60000."


def test_invoke_errors(ow: OW) -> None:
    assert ow.invoke("missing").status_code == 404
    ow.put_action("gen")
    not_object = ow.session.post(ow.url("actions/gen"), json=[1, 2])
    assert not_object.status_code == 400
    assert ow.session.post(ow.url("actions/gen"), params={"blocking": "maybe"}).status_code == 400


def test_payload_over_the_limit_is_413(ow: OW) -> None:
    ow.put_action("gen")
    big = {"prompt": "x" * (1024 * 1024 + 10)}
    r = ow.invoke("gen", big)
    assert r.status_code == 413
    assert r.json()["error"].startswith("Request larger than allowed:")
    assert ow.session.get(ow.url("activations"), params={"count": "true"}).json() == {"activations": 0}


def test_chunked_payload_over_the_limit_is_413(ow: OW, guest: Tenant) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    ow.put_action("gen")
    parts = urlsplit(ow.base)
    body = b'{"prompt": "' + b"y" * (1024 * 1024 + 100) + b'"}'
    auth = requests.auth._basic_auth_str(*guest.auth)  # type: ignore[attr-defined]
    head = (f"POST /api/v1/namespaces/_/actions/gen HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: {auth}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for i in range(0, len(body), 65536):
                piece = body[i:i + 65536]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the whole body is sent
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.split(b"\r\n", 1)[0] == b"HTTP/1.1 413 REQUEST ENTITY TOO LARGE", reply[:600]
    assert b"Request larger than allowed" in reply


def test_rate_limit_is_429_with_the_openwhisk_message(
    ow: OW, redis_client: redis.Redis, keys: Keys
) -> None:
    Limiter(redis_client, keys, NamespaceLimits(60, 30)).set_limits("guest", invocations_per_minute=2)
    ow.put_action("gen")
    assert [ow.invoke("gen").status_code for _ in range(2)] == [202, 202]
    r = ow.invoke("gen")
    assert r.status_code == 429
    assert r.json()["error"] == "Too many requests in the last minute (count: 3, allowed: 2)."


def test_concurrency_limit_is_429_until_an_activation_completes(
    ow: OW, redis_client: redis.Redis, keys: Keys, redis_server
) -> None:
    Limiter(redis_client, keys, NamespaceLimits(60, 30)).set_limits("guest", concurrent_invocations=1)
    ow.put_action("gen", parameters=[{"key": "max_tokens", "value": 1}])
    assert ow.invoke("gen").status_code == 202  # nobody consumes: stays in flight
    r = ow.invoke("gen")
    assert r.status_code == 429
    assert r.json()["error"] == "Too many concurrent requests in flight (count: 1, allowed: 1)."
    drain = QueueConsumer(redis_server.url, keys).start()
    try:
        deadline = time.monotonic() + 10
        while ow.session.get(ow.url("activations"), params={"count": "true"}).json()["activations"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ow.invoke("gen", blocking=True).status_code == 200
    finally:
        drain.stop()


def test_activations_list_get_result_logs(ow: OW, consumer: QueueConsumer) -> None:
    ow.put_action("a")
    ow.put_action("b")
    ids = [ow.invoke(name, {"max_tokens": 1}, blocking=True).headers["x-openwhisk-activation-id"]
           for name in ("a", "b", "a")]
    listed = ow.session.get(ow.url("activations")).json()
    assert [x["activationId"] for x in listed] == ids[::-1]
    assert "response" not in listed[0] and listed[0]["statusCode"] == 0
    assert [x["activationId"] for x in ow.session.get(ow.url("activations"), params={"name": "a"}).json()] == [
        ids[2], ids[0]]
    docs = ow.session.get(ow.url("activations"), params={"docs": "true", "limit": 1}).json()
    assert len(docs) == 1 and docs[0]["response"]["success"] is True
    assert [x["activationId"] for x in ow.session.get(ow.url("activations"), params={"skip": 2}).json()] == [ids[0]]
    assert ow.session.get(ow.url("activations"), params={"count": "true"}).json() == {"activations": 3}
    assert ow.session.get(ow.url("activations"), params={"count": "true", "name": "b"}).json() == {"activations": 1}
    first = ow.session.get(ow.url(f"activations/{ids[0]}")).json()
    since = ow.session.get(ow.url("activations"), params={"since": first["start"] + 10**9}).json()
    assert since == []
    result = ow.session.get(ow.url(f"activations/{ids[0]}/result"))
    assert result.status_code == 200 and result.json()["status"] == "success" and "text" in result.json()["result"]
    logs = ow.session.get(ow.url(f"activations/{ids[0]}/logs"))
    assert logs.json() == {"logs": first["logs"]} and logs.json()["logs"]
    assert ow.session.get(ow.url(f"activations/{'0' * 32}")).status_code == 404
    assert ow.session.get(ow.url("activations/not-an-id")).status_code == 400


def test_another_namespaces_activation_is_not_found(
    ow: OW, other: Tenant, consumer: QueueConsumer, gunicorn_gateway: str
) -> None:
    ow.put_action("a")
    aid = ow.invoke("a", {"max_tokens": 1}, blocking=True).headers["x-openwhisk-activation-id"]
    for suffix in ("", "/result", "/logs"):
        r = requests.get(f"{gunicorn_gateway}/api/v1/namespaces/_/activations/{aid}{suffix}", auth=other.auth)
        assert r.status_code == 404
    assert requests.get(f"{gunicorn_gateway}/api/v1/namespaces/_/activations", auth=other.auth).json() == []
