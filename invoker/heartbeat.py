"""Every lease this invoker process holds, renewed in one pipeline per heartbeat (python-rq's
``maintain_heartbeats``: the worker's and its jobs' leases extended together).

The leases, each a Redis key or stream entry that lapses unless renewed:

- per activation this invoker runs (:meth:`Heartbeat.hold_run`): its run claim
  (``keys.activation_claim``, ``claim_idle_ms``) and its queue entry's idle time (``XCLAIM ... JUSTID``
  resets it), so :meth:`invoker.lifecycle.RunLifecycle.cleanup` reclaims only a dead consumer's work;
- per run slot a migrated run of this invoker holds on some node's container (:meth:`Heartbeat.hold_slot`,
  ``keys.slot_lease``, :mod:`faas_llm.slot_lease`): the granting node frees the slot once it lapses.

The maintenance loop calls :meth:`Heartbeat.beat` every ``heartbeat_interval_s``; both TTLs outlive
several missed beats.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from faas_llm import slot_lease
from faas_llm.keys import Keys
from faas_llm.settings import Settings


@dataclass(frozen=True)
class HeldRun:
    """An activation this invoker runs: the queue entry it came from."""

    queue: str
    entry_id: str
    activation_id: str


class Heartbeat:
    """The leases of one invoker (thread-safe); :meth:`beat` renews them all in one round trip."""

    def __init__(self, settings: Settings, r: Any, keys: Keys, consumer: str) -> None:
        self.r, self.keys, self.consumer = r, keys, consumer
        self.group = keys.consumer_group()
        self.claim_ms = settings.claim_idle_ms
        self.slot_ttl_ms = slot_lease.lease_ttl_ms(settings)
        self._lock = threading.Lock()
        self._runs: dict[str, HeldRun] = {}
        self._slots: set[str] = set()

    def hold_run(self, run: HeldRun) -> None:
        with self._lock:
            self._runs[run.entry_id] = run

    def drop_run(self, entry_id: str) -> None:
        with self._lock:
            self._runs.pop(entry_id, None)

    def hold_slot(self, lease_id: str) -> None:
        with self._lock:
            self._slots.add(lease_id)

    def drop_slot(self, lease_id: str) -> None:
        with self._lock:
            self._slots.discard(lease_id)

    def runs(self) -> list[HeldRun]:
        with self._lock:
            return list(self._runs.values())

    def slots(self) -> list[str]:
        with self._lock:
            return sorted(self._slots)

    def beat(self) -> int:
        """Renew every lease held now, in one pipeline; the number of leases renewed. A lease whose key is
        gone stays gone (``PEXPIRE`` of a missing key is a no-op): its holder learns it where it uses it."""
        runs, slots = self.runs(), self.slots()
        if not runs and not slots:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for run in runs:
            pipe.xclaim(run.queue, self.group, self.consumer, 0, [run.entry_id], justid=True)
            pipe.pexpire(self.keys.activation_claim(run.activation_id), self.claim_ms)
        for lease_id in slots:
            pipe.pexpire(self.keys.slot_lease(lease_id), self.slot_ttl_ms)
        pipe.execute(raise_on_error=False)
        return len(runs) + len(slots)
