"""The hot path's Redis commands on a connection of the calling thread, without redis-py's command layers.

A command through ``redis.Redis`` takes a connection from the pool (a lock, a ``poll`` to check the
connection holds no stray data, observability counters), wraps the call in its retry object and
returns the connection; on the blocking invoke's two round trips that was about a tenth of the
gateway's CPU. Here each gateway thread keeps one connection of its own (the client's connection
class and settings: the same parser, decoding, timeouts and health checks), so a command is a send
and a read. The replies are what ``redis.Redis`` returns for the commands used here (``EVALSHA``,
``BLMOVE``, ``GET``: no response callbacks). As redis-py does by default, a command that fails with a
connection error is sent once more on a fresh connection (e.g. after a Redis restart).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError


class DirectRedis:
    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._local = threading.local()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connection_class(**self._connection_kwargs)
        return conn

    def execute(self, *args: Any) -> Any:
        """One command, its reply."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands sent together (one write; not a transaction), their replies in order. An
        error reply of any of them is raised (after all replies were read)."""
        conn = self._connection()
        try:
            return self._send_read(conn, commands)
        except (ConnectionError, TimeoutError):
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
            except redis.ResponseError as exc:  # the connection is still in step: read the others
                replies.append(exc)
                error = error or exc
        if error is not None:
            raise error
        return replies

    def script(self, source: str) -> DirectScript:
        return DirectScript(self, source)


class DirectScript:
    """``EVALSHA`` of ``source``, loading it when Redis does not know it (after a restart or a flush)."""

    def __init__(self, direct: DirectRedis, source: str) -> None:
        self.direct = direct
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self.direct.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.direct.execute("SCRIPT", "LOAD", self.source)
            return self.direct.execute("EVALSHA", self.sha, len(keys), *keys, *args)
