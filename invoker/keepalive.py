"""Per-thread keep-alive HTTP/1.1 connections from the invoker to its runtimes (a lean client on a socket).

The warm path posts one ``/run`` per invocation. ``requests`` costs about a millisecond of CPU per
call here (half of it scanning the environment for proxy settings on every request); ``http.client``
costs less but still parses each reply's headers with the ``email`` package (about a fifth of the
invoker's CPU per warm run in ``py-spy``). This client writes the request with one ``sendall`` and
reads the status line and headers off a buffered reader of the socket itself; bodies are either
``Content-Length``, chunked (the runtime's NDJSON streams) or read to the close. A connection kept
open per dispatcher thread also saves the TCP connect and the runtime's accept.

A connection idle longer than :data:`REUSE_IDLE_S` is not reused (the runtime closes idle
connections after a while). A reused connection found closed while the request is being sent is
retried once on a fresh one (the runtime never saw it); a failure after that is the runtime's.

Errors are those of ``http.client``: ``OSError`` (``TimeoutError`` on a timeout,
``http.client.RemoteDisconnected`` when the runtime closed the connection without a reply) and
``http.client.HTTPException`` for a malformed reply.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import IO
from urllib.parse import urlsplit

#: A kept-alive connection idle longer than this is opened afresh.
REUSE_IDLE_S = 2.0
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_MAX_LINE = 65536
_MAX_HEADERS = 100

_local = threading.local()


class Connection:
    """One TCP connection to a runtime and the buffered reader of its replies."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.host_header = f"{host}:{port}".encode("ascii")
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile: IO[bytes] = self.sock.makefile("rb")

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()


class Response:
    """A reply whose status line and headers are read; the body is read with :meth:`read` / :meth:`readline`."""

    def __init__(self, rfile: IO[bytes]) -> None:
        self._fp = rfile
        while True:  # skip interim 1xx replies
            version, status = _status_line(rfile)
            headers = _headers(rfile)
            if status >= 200:
                break
        self.status = status
        self.headers = headers
        connection = headers.get("connection", "").lower()
        self.will_close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._left: int | None = None  # bytes left of a Content-Length body (None: chunked or to the close)
        if not self.chunked:
            raw = headers.get("content-length")
            if raw is not None:
                try:
                    self._left = int(raw)
                except ValueError:
                    raise http.client.HTTPException(f"bad Content-Length {raw!r}") from None
                if self._left < 0:
                    raise http.client.HTTPException(f"bad Content-Length {raw!r}")
            elif status in (204, 304):
                self._left = 0
            else:
                self.will_close = True  # a body that ends at the close
        self._chunk_left = 0  # bytes left of the current chunk
        self._done = self._left == 0
        self._pending = b""  # read off the body, not yet returned (readline)

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    # --- body ---------------------------------------------------------------------------
    def _next_piece(self) -> bytes:
        """The next bytes of the body (b"" at its end)."""
        if self._done:
            return b""
        if self.chunked:
            if self._chunk_left == 0:
                line = self._fp.readline(_MAX_LINE)
                if not line:
                    raise http.client.IncompleteRead(b"")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise http.client.HTTPException(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while True:  # trailers, up to the blank line
                        trailer = self._fp.readline(_MAX_LINE)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    self._done = True
                    return b""
                self._chunk_left = size
            data = self._fp.read(self._chunk_left)
            if len(data) < self._chunk_left:
                raise http.client.IncompleteRead(data)
            self._chunk_left = 0
            if self._fp.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
                raise http.client.HTTPException("a chunk did not end with CRLF")
            return data
        if self._left is None:  # to the close
            data = self._fp.read1(65536) if hasattr(self._fp, "read1") else self._fp.read(65536)
            if not data:
                self._done = True
            return data
        data = self._fp.read(self._left)
        if len(data) < self._left:
            raise http.client.IncompleteRead(data, self._left - len(data))
        self._left = 0
        self._done = True
        return data

    def read(self) -> bytes:
        """The rest of the body."""
        parts = [self._pending]
        self._pending = b""
        while piece := self._next_piece():
            parts.append(piece)
        return b"".join(parts)

    def readline(self) -> bytes:
        """The body's next line (with its ``\\n``; the last may have none); b"" at the end."""
        buf = self._pending
        while b"\n" not in buf:
            piece = self._next_piece()
            if not piece:
                self._pending = b""
                return buf
            buf += piece
        line, _, self._pending = buf.partition(b"\n")
        return line + b"\n"


def _status_line(rfile: IO[bytes]) -> tuple[str, int]:
    line = rfile.readline(_MAX_LINE + 1)
    if not line:
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    parts = line.decode("iso-8859-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise http.client.BadStatusLine(line.decode("iso-8859-1", "replace")[:80])
    try:
        status = int(parts[1])
    except ValueError:
        raise http.client.BadStatusLine(line.decode("iso-8859-1", "replace")[:80]) from None
    return parts[0], status


def _headers(rfile: IO[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = rfile.readline(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise http.client.IncompleteRead(b"")
        name, sep, value = line.decode("iso-8859-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


def _pool() -> dict[str, tuple[Connection, float]]:
    pool: dict[str, tuple[Connection, float]] | None = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    return pool


def _fresh(url: str, connect_timeout: float) -> Connection:
    parts = urlsplit(url)
    return Connection(parts.hostname or "127.0.0.1", parts.port or 80, connect_timeout)


def post(url: str, path: str, body: bytes, connect_timeout: float, read_timeout: float) -> Response:
    """``POST url+path`` with a JSON body on this thread's connection to ``url``; the response's
    headers are read. Hand the response back with :func:`finish` (or :func:`discard` on an error)."""
    pool = _pool()
    held = pool.pop(url, None)
    conn: Connection | None = None
    if held is not None:
        conn, used = held
        if time.monotonic() - used > REUSE_IDLE_S:
            conn.close()
            conn = None
    for attempt in (0, 1):
        reused = conn is not None
        if conn is None:
            conn = _fresh(url, connect_timeout)
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
            path.encode("ascii"), conn.host_header, len(body))
        try:
            conn.sock.settimeout(read_timeout)
            conn.sock.sendall(head + body)
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
            resp = Response(conn.rfile)  # no retry from here on: the runtime may have run it
        except BaseException:
            conn.close()
            raise
        _local.current = (url, conn)
        return resp
    raise AssertionError("unreachable")


def finish(url: str, resp: Response) -> None:
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
