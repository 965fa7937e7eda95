"""Per-thread keep-alive HTTP/1.1 connections from the invoker to its runtimes (``http.client``).

The warm path posts one ``/run`` per invocation. ``requests`` costs about a millisecond of CPU per
call here (half of it scanning the environment for proxy settings on every request); a plain
``http.client`` connection kept open per dispatcher thread costs a fraction of that and saves the
TCP connect and the runtime's accept.

A connection idle longer than :data:`REUSE_IDLE_S` is not reused (the runtime closes its side after
its gunicorn ``keepalive``, 5 s). A reused connection found closed while the request is being sent
is retried once on a fresh one (the runtime never saw it); a failure after that is the runtime's.
"""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

#: A kept-alive connection idle longer than this is opened afresh.
REUSE_IDLE_S = 2.0
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

_local = threading.local()


def _pool() -> dict[str, tuple[http.client.HTTPConnection, float]]:
    pool: dict[str, tuple[http.client.HTTPConnection, float]] | None = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    return pool


def _fresh(url: str, connect_timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=connect_timeout)


def post(url: str, path: str, body: bytes, connect_timeout: float, read_timeout: float
         ) -> http.client.HTTPResponse:
    """``POST url+path`` with a JSON body on this thread's connection to ``url``; the response's
    headers are read. Hand the response back with :func:`finish` (or :func:`discard` on an error)."""
    pool = _pool()
    held = pool.pop(url, None)
    conn: http.client.HTTPConnection | None = None
    if held is not None:
        conn, used = held
        if time.monotonic() - used > REUSE_IDLE_S:
            conn.close()
            conn = None
    for attempt in (0, 1):
        reused = conn is not None
        if conn is None:
            conn = _fresh(url, connect_timeout)
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            assert conn.sock is not None
            conn.sock.settimeout(read_timeout)
            conn.send(body)
        except _STALE:
            conn.close()
            conn = None
            if reused and attempt == 0:  # closed before the request went out: the runtime never saw it
                continue
            raise
        except BaseException:
            conn.close()
            raise
        try:
            resp = conn.getresponse()  # no retry from here on: the runtime may have run it
        except BaseException:
            conn.close()
            raise
        _local.current = (url, conn)
        return resp
    raise AssertionError("unreachable")


def finish(url: str, resp: http.client.HTTPResponse) -> None:
    """The response was read to its end: keep its connection for the next call (unless it closes)."""
    current = getattr(_local, "current", None)
    _local.current = None
    if current is None or current[0] != url:
        return
    conn = current[1]
    resp.read()  # whatever is left (a stream's last chunk marker), so the connection is clean
    if resp.will_close:
        conn.close()
    else:
        _pool()[url] = (conn, time.monotonic())


def discard() -> None:
    """The call failed midway: close its connection."""
    current = getattr(_local, "current", None)
    _local.current = None
    if current is not None:
        current[1].close()
