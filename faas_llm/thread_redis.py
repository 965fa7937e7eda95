"""Hot-path Redis commands on one connection per thread, without ``redis.Redis``' per-command layers.

A command through ``redis.Redis`` checks a connection out of the pool and back in (a lock, and a
non-blocking ``poll`` to test the pooled socket for stray data), wraps the call in its retry object,
checks the arguments, runs reply callbacks and counts redis-py's operation metrics: about twice the CPU
of packing the command and parsing its reply. On the warm path (the gateway's admission script and
record wait, the invoker's ``XREADGROUP``, claim and completion scripts) that was about a tenth of each
service's CPU. Here each thread owns one connection made from the client's pool settings (its
connection class: the same parser, hiredis when installed, ``decode_responses``, timeouts, health
checks), so a command is a pack, a send and a read.

Errors are redis-py's (``ResponseError`` for an error reply, ``ConnectionError`` / ``TimeoutError``); a
connection that fails is dropped and the next command opens a new one. :meth:`ThreadRedis.pipeline` and
scripts are sent once more on a fresh connection after a connection error (as redis-py's default retry
does: a Redis restart, a connection the server closed) — the callers' scripts and reads are idempotent;
``NOSCRIPT`` (a restarted Redis, a flushed script cache) loads the script and runs it again. The replies
are the raw RESP replies decoded as the client decodes, which is what ``redis.Redis`` returns for the
commands used here (``EVALSHA``, ``BLMOVE``, ``GET``, ``XREADGROUP`` parsed by
:meth:`ThreadRedis.xreadgroup_one_stream`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import redis
from redis.exceptions import NoScriptError

_DROPPED = (redis.ConnectionError, redis.TimeoutError)


class ScriptSource(Protocol):
    """What a script call needs: redis-py's ``Script`` has both, :class:`ThreadScript` too (redis-py types
    them loosely: the source may be bytes)."""

    sha: Any
    script: Any


class ThreadRedis:
    """Per-thread connections to the Redis of ``client`` (its pool's connection class and settings)."""

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        self._make = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        self._local = threading.local()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._make(**self._kwargs)
        return conn

    def call(self, *args: Any) -> Any:
        """One command on this thread's connection, its reply; not retried (a failed connection is dropped)."""
        conn = self._conn()
        try:
            conn.send_packed_command(conn.pack_command(*args))
            return conn.read_response()
        except _DROPPED:
            conn.disconnect()
            raise

    def execute(self, *args: Any) -> Any:
        """One command, its reply; sent once more on a fresh connection after a connection error."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands sent together (one write; not a transaction), their replies in order; the lot is
        sent once more on a fresh connection after a connection error. An error reply of any of them is
        raised after all replies were read (so the connection stays in step)."""
        conn = self._conn()
        try:
            return self._send_read(conn, commands)
        except _DROPPED:
            conn.disconnect()
            return self._send_read(conn, commands)

    @staticmethod
    def _send_read(conn: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        error: Exception | None = None
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
                error = error or exc
        if error is not None:
            raise error
        return replies

    def run_script(self, script: ScriptSource, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` of ``script`` (redis-py's ``Script`` or a :class:`ThreadScript`); once more on a fresh
        connection after a connection error, and after ``NOSCRIPT`` once more with the script loaded."""
        for attempt in (0, 1):
            try:
                return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                script.sha = self.call("SCRIPT", "LOAD", script.script)
                return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
            except _DROPPED:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def script(self, source: str) -> ThreadScript:
        """A callable ``script(keys=..., args=...)`` of ``source`` on these connections."""
        return ThreadScript(self, source)

    def xreadgroup_one_stream(self, group: str, consumer: str, stream: str, count: int, block_ms: int
                              ) -> list[tuple[str, dict[str, Any]]]:
        """``XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS stream >``: the new entries as (id, fields)."""
        reply = self.call("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "BLOCK", block_ms,
                          "STREAMS", stream, ">")
        out: list[tuple[str, dict[str, Any]]] = []
        streams = reply.items() if isinstance(reply, dict) else reply or ()  # RESP3 answers a map
        for _stream, entries in streams:
            for entry_id, flat in entries or ():
                if flat is None:  # an entry deleted while pending (not for ">" reads; kept for safety)
                    continue
                it = iter(flat)
                out.append((entry_id, dict(zip(it, it, strict=True))))
        return out

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's storage goes)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.disconnect()


class ThreadScript:
    """``EVALSHA`` of ``source`` on a :class:`ThreadRedis`, loading it when Redis does not know it."""

    def __init__(self, direct: ThreadRedis, source: str) -> None:
        self.direct = direct
        self.script = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return self.direct.run_script(self, keys, args)
