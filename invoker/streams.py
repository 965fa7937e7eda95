"""Redis Streams plumbing of the per-action queues: the consumer group, acks, re-queues, backlog.

Every invoker joins the one consumer group (``keys.consumer_group()``) on every action queue.
A handled entry is acknowledged and deleted, so ``XLEN - pending`` is the backlog (entries
not yet delivered). A re-queued entry is a fresh copy at the stream's tail with its
``attempt`` counter raised, written atomically with the ack and delete of the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from faas_llm.activations import STREAM_FIELD
from faas_llm.keys import Keys

ATTEMPT_FIELD = "attempt"


def ensure_group(r: Any, queue: str, group: str) -> None:
    """Create the consumer group on ``queue`` (and the stream) from its beginning, if missing."""
    try:
        r.xgroup_create(queue, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def field(fields: Mapping[Any, Any], name: str) -> Any:
    if name in fields:
        return fields[name]
    return fields.get(name.encode())


def attempt_of(fields: Mapping[Any, Any]) -> int:
    raw = field(fields, ATTEMPT_FIELD)
    try:
        return max(1, int(raw)) if raw is not None else 1
    except (TypeError, ValueError):
        return 1


def ack_delete(r: Any, queue: str, group: str, entry_id: str) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.xack(queue, group, entry_id)
    pipe.xdel(queue, entry_id)
    pipe.execute()


def requeue(r: Any, queue: str, group: str, entry_id: str, fields: Mapping[Any, Any], attempt: int) -> str:
    """Put the entry's invocation back at the tail (with ``attempt``) and drop the old entry, atomically."""
    pipe = r.pipeline(transaction=True)
    pipe.xadd(queue, {STREAM_FIELD: field(fields, STREAM_FIELD), ATTEMPT_FIELD: str(attempt)})
    pipe.xack(queue, group, entry_id)
    pipe.xdel(queue, entry_id)
    new_id = pipe.execute()[0]
    return new_id.decode() if isinstance(new_id, bytes) else str(new_id)


def backlog(r: Any, queue: str, group: str) -> int:
    """Entries of ``queue`` not yet delivered to any consumer."""
    pipe = r.pipeline(transaction=False)
    pipe.xlen(queue)
    pipe.xpending(queue, group)
    try:
        length, pending = pipe.execute()
    except redis.ResponseError:  # no group yet, or no stream yet (XLEN of a missing key is 0)
        return int(r.xlen(queue))
    return max(0, int(length) - int(pending.get("pending", 0) if isinstance(pending, dict) else 0))


def head_undelivered(r: Any, queue: str, group: str) -> tuple[str, Mapping[Any, Any]] | None:
    """The oldest entry not yet delivered to the group (``None`` when there is none, or no stream yet)."""
    try:
        groups = r.xinfo_groups(queue)
    except redis.ResponseError:  # the stream does not exist yet (an action queued only for min_instances)
        return None
    last = next((g.get("last-delivered-id") for g in groups if g.get("name") == group), None)
    if last is None:
        return None
    entries = r.xrange(queue, f"({last}", "+", count=1)
    return (str(entries[0][0]), entries[0][1]) if entries else None


def autoclaim(r: Any, queue: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
              ) -> list[tuple[str, Mapping[Any, Any] | None]]:
    """XAUTOCLAIM entries idle at least ``min_idle_ms``. Redis 6.2 answers (next, entries) with
    deleted entries as nil; 7.x answers (next, entries, deleted ids): both become a list of
    (entry id, fields or ``None``)."""
    resp = r.xautoclaim(queue, group, consumer, min_idle_ms, start_id="0-0", count=count)
    if not resp or len(resp) < 2:
        return []
    out: list[tuple[str, Mapping[Any, Any] | None]] = []
    for item in resp[1] or []:
        if item is None:
            continue
        entry_id, fields = item
        if entry_id is None:
            continue
        out.append((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), fields))
    if len(resp) >= 3:
        for deleted in resp[2] or []:
            out.append((deleted.decode() if isinstance(deleted, bytes) else str(deleted), None))
    return out


def queue_action(keys: Keys, queue: str) -> tuple[str, str] | None:
    """(namespace, action) of an action queue key (entity names never contain ':')."""
    head = keys.action_queue("n", "a")[: -len("n:a")]
    if not queue.startswith(head):
        return None
    parts = queue[len(head):].split(":")
    return (parts[0], parts[1]) if len(parts) == 2 else None
