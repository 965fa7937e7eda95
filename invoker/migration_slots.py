"""Slot accounting of a migrated run, for the invoker that owns it (:class:`invoker.handoff.SlotHooks`).

* the source's slot is released as soon as the source stopped (``release_source``: the invoker's
  callback frees the container and gives it a new worker), so a waiting request can use it;
* the destination's resume holds the slot lease the coordinator took on the destination container
  (:mod:`faas_llm.slot_lease`), renewed with the invoker's other leases (:class:`invoker.heartbeat.Heartbeat`)
  and released when the resume ends;
* a fallback after the destination failed leases a slot on the source's node: the source's own
  container while it is there, else a container of the action that node's invoker starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from faas_llm import slot_lease, starts
from faas_llm.errors import NoCapacityError
from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.types import now_ms
from invoker.heartbeat import Heartbeat


class LeasedSlots:
    """:class:`invoker.handoff.SlotHooks` for one run of an invoker."""

    def __init__(self, settings: Settings, r: Any, keys: Keys, heartbeat: Heartbeat,
                 release_source: Callable[[], None], deadline_ms: int) -> None:
        self.settings, self.r, self.keys, self.heartbeat = settings, r, keys, heartbeat
        self._release_source = release_source
        self.deadline_ms = deadline_ms

    def release_source(self) -> None:
        self._release_source()

    @contextmanager
    def hold(self, lease: slot_lease.SlotLease | None) -> Iterator[None]:
        if lease is not None:
            self.heartbeat.hold_slot(lease.id)
        try:
            yield
        finally:
            if lease is not None:
                self.heartbeat.drop_slot(lease.id)
                slot_lease.release(self.r, self.keys, lease)

    @contextmanager
    def fallback(self, source: Any) -> Iterator[str]:
        wait_s = max(1.0, (self.deadline_ms - now_ms()) / 1000)
        ttl = slot_lease.lease_ttl_ms(self.settings)
        try:
            lease = slot_lease.request_slot(self.r, self.keys, source.node, source.url, ttl_ms=ttl, wait_s=wait_s)
        except NoCapacityError:  # the source's container is gone (e.g. replaced by the waiting request's)
            url = starts.ensure_container(self.r, self.keys, source.node, source.namespace, source.action, wait_s,
                                          source.activation_id)
            lease = slot_lease.request_slot(self.r, self.keys, source.node, url, ttl_ms=ttl,
                                            wait_s=max(1.0, (self.deadline_ms - now_ms()) / 1000))
        with self.hold(lease):
            yield lease.url
