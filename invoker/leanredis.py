"""The warm path's Redis calls on one connection per thread, without the client's per-command machinery.

Each warm run makes three Redis calls (``XREADGROUP``, the claim script, the completion script). Through
``redis.Redis`` each costs a pool check-out and check-in (with a non-blocking read to test the pooled
socket), the retry wrapper, the command's argument checks, reply callbacks and redis-py's operation
metrics: about twice the CPU of packing the command and parsing its reply, which is all that is left
here (``pack_command`` + ``send_packed_command`` + ``read_response`` of a ``redis.Connection`` this thread
owns, made from the client's pool settings, so hiredis, ``decode_responses`` and timeouts are the same).

Errors are redis-py's (``ResponseError`` for an error reply, ``ConnectionError`` / ``TimeoutError``); a
connection that fails is dropped and the next call opens a new one. Scripts are idempotent for the caller
(:mod:`invoker.claims`, :meth:`faas_llm.activations.ActivationStore.complete_and_ack`), so a script call
that fails on a connection error is sent once more on a fresh connection (a Redis restart, a connection
the server closed); ``NOSCRIPT`` (a flushed script cache) loads the script and runs it again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

_DROPPED = (redis.ConnectionError, redis.TimeoutError)


class LeanRedis:
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
        """One command on this thread's connection; its raw (RESP) reply, decoded as the client decodes."""
        conn = self._conn()
        try:
            conn.send_packed_command(conn.pack_command(*args))
            return conn.read_response()
        except _DROPPED:
            conn.disconnect()
            raise

    def run_script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script(keys=keys, args=args)`` (``EVALSHA``), once more on a fresh connection after a connection
        error, and after ``NOSCRIPT`` once more with the script loaded."""
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
