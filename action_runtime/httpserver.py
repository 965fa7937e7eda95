"""A lean HTTP/1.1 server for the runtime's routes: keep-alive, chunked NDJSON streams, 413, drain.

Why not gunicorn + Flask: a warm ``/run`` of a one-token generation costs ~2.5 ms in the model,
and gunicorn's gthread worker plus Flask/werkzeug's request and response objects cost about as
much again per request (issue 11). This server reads the request line, the headers it needs and
the body straight off the socket and writes each reply with one ``sendall``.

- One thread per connection (the invoker keeps one keep-alive connection per dispatcher thread);
  at most ``max_active`` requests are handled at once (gunicorn's ``threads``), more wait.
- A connection idle for :data:`KEEPALIVE_S` between requests is closed (the invoker reuses one
  only within 2 s of its last use, see ``invoker/keepalive.py``).
- A body over ``max_body`` bytes (``Content-Length`` or chunked) is answered 413 and the
  connection closed.
- :meth:`HttpServer.drain`: stop accepting (new connections are refused), let the requests in
  flight finish (a stream to its end) within the grace period; idle connections are closed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus

from action_runtime.routes import HttpReply, malformed_reply, too_large_reply

log = logging.getLogger(__name__)

#: seconds a kept-alive connection may sit idle between requests
KEEPALIVE_S = 5.0
#: seconds one read or write of a request in progress may block (a stalled client)
IO_TIMEOUT_S = 300.0
MAX_LINE = 8190
MAX_HEADERS = 100

Handle = Callable[[str, str, bytes], HttpReply]


class BadRequest(Exception):
    pass


class TooLarge(Exception):
    pass


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _head(status: int, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"] + [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """Serve ``handle`` on a bound, listening socket until :meth:`drain`."""

    def __init__(self, sock: socket.socket, handle: Handle, max_body: int, max_active: int) -> None:
        self.sock = sock
        self.handle = handle
        self.max_body = max_body
        self._slots = threading.BoundedSemaphore(max_active)
        self._lock = threading.Lock()
        self._active = 0  # requests being handled (a stream counts until its last chunk)
        self._idle_done = threading.Condition(self._lock)
        self._connections: set[socket.socket] = set()
        self.draining = False

    @classmethod
    def listen(cls, host: str, port: int, handle: Handle, max_body: int, max_active: int) -> HttpServer:
        sock = socket.create_server((host, port), backlog=128, reuse_port=False)
        return cls(sock, handle, max_body, max_active)

    # --- accepting ---------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept connections until :meth:`drain` closes the listening socket."""
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                if self.draining:
                    return
                raise
            threading.Thread(target=self._connection, args=(conn,), name="runtime-conn", daemon=True).start()

    def drain(self, grace_s: float) -> bool:
        """Stop accepting, close idle connections, wait up to ``grace_s`` for requests in flight.
        True when none is left."""
        with self._lock:
            self.draining = True
            idle = list(self._connections)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in serve_forever
        except OSError:
            pass
        self.sock.close()
        for conn in idle:  # blocked in a keep-alive read: they end; busy ones close after their reply
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        with self._idle_done:
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._idle_done.wait(left)
            return self._active == 0

    # --- one connection --------------------------------------------------------------
    def _connection(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self.draining:
                conn.close()
                return
            self._connections.add(conn)
        rfile = conn.makefile("rb", 65536)
        try:
            while self._one_request(conn, rfile):
                pass
        except (OSError, BadRequest):
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            with self._lock:
                self._connections.discard(conn)
            try:
                rfile.close()
                conn.close()
            except OSError:
                pass

    def _read_head(self, conn: socket.socket, rfile: object) -> tuple[str, str, str, dict[str, str]] | None:
        """The request line and headers (names lower-cased), or ``None`` at the connection's end."""
        readline = rfile.readline  # type: ignore[attr-defined]
        conn.settimeout(KEEPALIVE_S)
        try:
            line = readline(MAX_LINE + 1)
            while line in (b"\r\n", b"\n"):
                line = readline(MAX_LINE + 1)
        except TimeoutError:
            return None
        if not line:
            return None
        conn.settimeout(IO_TIMEOUT_S)
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/") or len(line) > MAX_LINE:
            raise BadRequest(line[:100])
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = readline(MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                return parts[0], parts[1], parts[2], headers
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest(raw[:100])
            headers[name.strip().lower()] = value.strip()
        raise BadRequest("too many headers")

    def _read_body(self, conn: socket.socket, rfile: object, headers: dict[str, str]) -> bytes:
        read, readline = rfile.read, rfile.readline  # type: ignore[attr-defined]
        if headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                n = int(readline(MAX_LINE + 1).split(b";", 1)[0].strip() or b"0", 16)
                if n == 0:
                    while readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                size += n
                if size > self.max_body:
                    raise TooLarge()
                chunks.append(read(n))
                readline(MAX_LINE + 1)
        length = headers.get("content-length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise BadRequest(f"Content-Length {length!r}") from None
        if n > self.max_body:
            raise TooLarge()
        body: bytes = read(n)
        if len(body) < n:
            raise BadRequest("the body ended early")
        return body

    def _one_request(self, conn: socket.socket, rfile: object) -> bool:
        """Read and answer one request; False when the connection is to be closed."""
        head = self._read_head(conn, rfile)
        if head is None:
            return False
        method, target, version, headers = head
        connection = headers.get("connection", "").lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        try:
            body = self._read_body(conn, rfile, headers)
        except TooLarge:
            conn.sendall(self._bytes(too_large_reply(), keep=False))
            return False
        except (BadRequest, ValueError):
            conn.sendall(self._bytes(malformed_reply(), keep=False))
            return False
        with self._slots:
            with self._lock:
                self._active += 1
            try:
                reply = self.handle(method, target, body)
                with self._lock:
                    keep = keep and not self.draining
                if isinstance(reply.body, bytes):
                    conn.sendall(self._bytes(reply, keep))
                else:
                    keep = self._stream(conn, reply, reply.body, keep and version == "HTTP/1.1")
            finally:
                with self._lock:
                    self._active -= 1
                    if not self._active:
                        self._idle_done.notify_all()
        return keep and not self.draining

    def _fields(self, reply: HttpReply, keep: bool) -> list[tuple[str, str]]:
        fields = [("Content-Type", reply.content_type), *reply.headers]
        if not keep:
            fields.append(("Connection", "close"))
        return fields

    def _bytes(self, reply: HttpReply, keep: bool) -> bytes:
        assert isinstance(reply.body, bytes)
        fields = self._fields(reply, keep)
        fields.append(("Content-Length", str(len(reply.body))))
        return _head(reply.status, fields) + reply.body

    def _stream(self, conn: socket.socket, reply: HttpReply, chunks: Iterator[bytes], keep: bool) -> bool:
        """Write a streamed reply (chunked on a kept-alive HTTP/1.1 connection, else to the close)."""
        fields = self._fields(reply, keep)
        if keep:
            fields.append(("Transfer-Encoding", "chunked"))
        try:
            conn.sendall(_head(reply.status, fields))
            for chunk in chunks:
                if chunk:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if keep else chunk)
            if keep:
                conn.sendall(b"0\r\n\r\n")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return keep
