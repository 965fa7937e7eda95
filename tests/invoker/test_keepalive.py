"""The invoker's lean HTTP/1.1 client (invoker.keepalive) against the runtime's own HTTP server and a raw socket."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from action_runtime.httpserver import HttpServer
from action_runtime.routes import HttpReply, json_reply
from faas_llm.runtime_protocol import result_event, token_event
from invoker import keepalive, runtime_client
from invoker.runtime_client import RunOutcome


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, str, bytes]], list[int]]]:
    """The runtime's server on a free port; each request is logged; ``/run`` echoes, ``/stream`` streams."""
    seen: list[tuple[str, str, bytes]] = []
    peers: list[int] = []

    def handle(method: str, target: str, body: bytes) -> HttpReply:
        seen.append((method, target, body))
        if target == "/run":
            return json_reply({"echo": json.loads(body), "big": "x" * 100_000})
        if target == "/stream":
            lines = [json.dumps(token_event(i, i, f"t{i}")).encode() + b"\n" for i in range(3)]
            lines.append(json.dumps(result_event({"text": "t0t1t2"})).encode() + b"\n")
            # a line split over two chunks, as a server may write it
            return HttpReply(200, iter([lines[0][:5], lines[0][5:], *lines[1:]]), content_type="application/x-ndjson")
        return json_reply({"error": "nope"}, 404)

    srv = HttpServer.listen("127.0.0.1", 0, handle, max_body=1 << 20, max_active=4)
    original = srv._connection

    def counting(conn: socket.socket) -> None:
        peers.append(conn.getpeername()[1])
        original(conn)

    srv._connection = counting  # type: ignore[method-assign]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    port = srv.sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen, peers
    finally:
        srv.drain(1.0)
        keepalive.discard()
        keepalive._pool().clear()


def test_json_replies_over_one_kept_alive_connection(server: tuple[str, list, list[int]]) -> None:
    url, seen, peers = server
    for i in range(3):
        resp = keepalive.post(url, "/run", json.dumps({"i": i}).encode(), 5.0, 5.0)
        assert resp.status == 200 and resp.getheader("content-type") == "application/json"
        body = json.loads(resp.read())
        keepalive.finish(url, resp)
        assert body["echo"] == {"i": i} and len(body["big"]) == 100_000
    assert [s[:2] for s in seen] == [("POST", "/run")] * 3 and len(peers) == 1
    resp = keepalive.post(url, "/nothing", b"{}", 5.0, 5.0)
    assert resp.status == 404 and json.loads(resp.read()) == {"error": "nope"}
    keepalive.finish(url, resp)
    assert len(peers) == 1


def test_a_chunked_ndjson_stream_is_read_line_by_line(server: tuple[str, list, list[int]]) -> None:
    url, _seen, peers = server
    chunks: list[dict] = []
    resp = keepalive.post(url, "/stream", b"{}", 5.0, 5.0)
    assert (resp.getheader("Content-Type") or "").startswith("application/x-ndjson")
    out = runtime_client._read_stream(resp, 0.0, chunks.append)
    keepalive.finish(url, resp)
    assert out == RunOutcome(runtime_client.ActivationStatus.SUCCESS, {"text": "t0t1t2"}, out.first_token_s, 3)
    assert [c["token_ids"] for c in chunks] == [[0], [1], [2]]
    # the connection is clean after the stream: the next request reuses it
    resp = keepalive.post(url, "/run", b"{}", 5.0, 5.0)
    assert resp.status == 200 and json.loads(resp.read())["echo"] == {}
    keepalive.finish(url, resp)
    assert len(peers) == 1


def test_run_classifies_the_reply(server: tuple[str, list, list[int]]) -> None:
    url, seen, _peers = server
    outcome = runtime_client.run(url, {"value": {"a": 1}}, deadline_ms=10**13)
    assert outcome.status is runtime_client.ActivationStatus.SUCCESS
    assert outcome.result["echo"] == {"value": {"a": 1}}
    assert json.loads(seen[-1][2]) == {"value": {"a": 1}}


def _one_shot_server(reply: bytes, close: bool = True) -> tuple[str, threading.Thread, list[bytes]]:
    """A raw socket that reads one request and writes ``reply`` (then closes)."""
    lsock = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        got.append(data)
        if reply:
            conn.sendall(reply)
        if not close:
            time.sleep(2.0)  # hold the connection open, silent
        conn.close()
        lsock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{lsock.getsockname()[1]}", thread, got


def test_a_reply_without_length_is_read_to_the_close_and_not_reused() -> None:
    url, thread, got = _one_shot_server(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ok\": true}")
    outcome = runtime_client.run(url, {"value": {}}, deadline_ms=10**13)
    thread.join(5)
    assert outcome.result == {"ok": True}
    assert got[0].startswith(b"POST /run HTTP/1.1\r\n")
    assert got[0].endswith(b"Content-Length: 13\r\n\r\n{\"value\": {}}")
    assert url not in keepalive._pool()


def test_a_runtime_that_closes_without_a_reply_is_gone_and_a_truncated_body_too() -> None:
    url, thread, _got = _one_shot_server(b"")
    with pytest.raises(runtime_client.RuntimeGone):
        runtime_client.run(url, {"value": {}}, deadline_ms=10**13)
    thread.join(5)
    url, thread, _got = _one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\"")
    with pytest.raises(runtime_client.RuntimeGone):
        runtime_client.run(url, {"value": {}}, deadline_ms=10**13)
    thread.join(5)
    url, thread, _got = _one_shot_server(b"garbage\r\n\r\n")
    with pytest.raises(runtime_client.RuntimeGone):
        runtime_client.run(url, {"value": {}}, deadline_ms=10**13)
    thread.join(5)


def test_a_runtime_that_does_not_answer_in_time_times_out() -> None:
    url, thread, _got = _one_shot_server(b"", close=False)
    with pytest.raises(runtime_client.RunTimedOut):
        runtime_client.run(url, {"value": {}}, deadline_ms=int(time.time() * 1000) - 10_000)  # 0.5 s floor
    thread.join(5)


def test_a_stale_kept_alive_connection_is_replaced_before_the_request_goes_out(
        server: tuple[str, list, list[int]]) -> None:
    url, seen, peers = server
    resp = keepalive.post(url, "/run", b"{}", 5.0, 5.0)
    resp.read()
    keepalive.finish(url, resp)
    conn, _used = keepalive._pool()[url]
    conn.sock.shutdown(socket.SHUT_WR)  # as a connection whose other end is gone: sendall fails
    conn.sock.close()
    resp = keepalive.post(url, "/run", b"{\"again\": 1}", 5.0, 5.0)
    assert resp.status == 200 and json.loads(resp.read())["echo"] == {"again": 1}
    keepalive.finish(url, resp)
    assert len(peers) == 2 and len(seen) == 2


