"""Run-slot leases: a run made outside a container's own dispatch holds one of its slots.

A migrated generation resumes on the destination's container through the *source* invoker's
dispatch thread (it owns the activation to the end, :mod:`faas_llm.migration`), so without a
lease the destination's invoker would not count that run against ``limits.concurrency``.

Protocol (all in Redis, no pickle):

1. the holder creates ``keys.slot_lease(id)`` (TTL ``ttl_ms``, renewed while the run lasts) and
   puts a ``lease`` entry on the container's node's start-request stream (``keys.node_starts``);
2. that node's invoker (:class:`invoker.slot_grants.SlotGrants`) takes one run slot of the container,
   waiting while it is full, and answers ``ok`` on ``keys.slot_grant(id)`` (or ``refused: ...``);
3. :func:`release` deletes the key and puts a ``release`` entry on the stream: the slot frees at
   once. The holder renews the key with its other leases (the invoker's :class:`invoker.heartbeat.Heartbeat`);
   a holder that dies stops renewing, and the node frees the slot once the key expires.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from faas_llm.errors import NoCapacityError
from faas_llm.keys import Keys
from faas_llm.settings import Settings

LEASE_FIELD = "lease"
RELEASE_FIELD = "release"
GRANTED = "ok"


@dataclass(frozen=True)
class SlotLease:
    id: str
    node: str
    url: str


def lease_ttl_ms(settings: Settings) -> int:
    """A lease outlives a few missed renewals (the invoker renews it every heartbeat)."""
    return max(10_000, int(settings.heartbeat_interval_s * 10_000))


def request_slot(r: Any, keys: Keys, node: str, url: str, *, ttl_ms: int, wait_s: float) -> SlotLease:
    """Hold a run slot of the container at ``url`` on ``node``; waits up to ``wait_s`` for one to free.

    Raises :class:`NoCapacityError` when the node refuses (no such container) or none frees in time.
    """
    lease = SlotLease(secrets.token_hex(8), node, url)
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.slot_lease(lease.id), json.dumps({"node": node, "url": url}), px=ttl_ms)
    pipe.xadd(keys.node_starts(node), {LEASE_FIELD: json.dumps({"id": lease.id, "url": url})},
              maxlen=1000, approximate=True)
    pipe.execute()
    deadline = time.monotonic() + wait_s
    answer: str | None = None
    while answer is None and time.monotonic() < deadline:
        got = r.blpop([keys.slot_grant(lease.id)], timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        if got:
            raw = got[1]
            answer = raw.decode() if isinstance(raw, bytes) else str(raw)
    if answer == GRANTED:
        return lease
    release(r, keys, lease)
    raise NoCapacityError(answer or f"no run slot of {url} on {node} freed within {wait_s:.0f} s")


def release(r: Any, keys: Keys, lease: SlotLease | None) -> None:
    """Give the slot back (idempotent)."""
    if lease is None:
        return
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.slot_lease(lease.id), keys.slot_grant(lease.id))
    pipe.xadd(keys.node_starts(lease.node), {RELEASE_FIELD: lease.id}, maxlen=1000, approximate=True)
    pipe.execute()


def encode(lease: SlotLease) -> str:
    return json.dumps({"id": lease.id, "node": lease.node, "url": lease.url})


def decode(raw: str | None) -> SlotLease | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return SlotLease(str(data["id"]), str(data["node"]), str(data["url"]))
    except (ValueError, KeyError, TypeError):
        return None
