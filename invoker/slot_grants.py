"""The node's side of run-slot leases (:mod:`faas_llm.slot_lease`): granting slots of this node's containers.

A ``lease`` entry on the node's start-request stream asks for one run slot of a container (by
URL); a thread takes it (waiting while the container is full, as long as the lease key lives)
and answers on the grant list. The slot is given back on a ``release`` entry, or by
:meth:`SlotGrants.sweep` (every heartbeat) once the holder stopped renewing the key.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from faas_llm import slot_lease
from faas_llm.keys import Keys
from faas_llm.types import ContainerState
from invoker.container import Container
from invoker.pool import ContainerPool

log = logging.getLogger(__name__)
GRANT_TTL_S = 60


class SlotGrants:
    """Run slots of this node's containers granted to leases held elsewhere (by lease id)."""

    def __init__(self, r: Any, keys: Keys, pool: ContainerPool, stopping: threading.Event) -> None:
        self.r, self.keys, self.pool, self.stopping = r, keys, pool, stopping
        self._lock = threading.Lock()
        self.held: dict[str, Container] = {}

    def handle(self, fields: Mapping[str, str]) -> bool:
        """Handle a lease or release entry of the start-request stream; False for any other entry."""
        if slot_lease.RELEASE_FIELD in fields:
            self.release(str(fields[slot_lease.RELEASE_FIELD]))
            return True
        if slot_lease.LEASE_FIELD not in fields:
            return False
        try:
            req = json.loads(fields[slot_lease.LEASE_FIELD])
            lease_id, url = str(req["id"]), str(req["url"])
        except (ValueError, KeyError, TypeError):
            log.error("ignoring a malformed slot lease request %r", dict(fields))
            return True
        threading.Thread(target=self._grant, args=(lease_id, url), daemon=True, name=f"lease-{lease_id}").start()
        return True

    def _answer(self, lease_id: str, answer: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.rpush(self.keys.slot_grant(lease_id), answer)
        pipe.expire(self.keys.slot_grant(lease_id), GRANT_TTL_S)
        pipe.execute()

    def _grant(self, lease_id: str, url: str) -> None:
        container = next((c for c in self.pool._live() if c.handle is not None and c.handle.url == url
                          and c.state is not ContainerState.REMOVING), None)
        if container is None:
            self._answer(lease_id, f"refused: no container at {url} on this node")
            return
        while not self.stopping.is_set():
            if not self.r.exists(self.keys.slot_lease(lease_id)):
                return  # the holder gave up waiting
            if container.acquire():
                break
            if container.state is ContainerState.REMOVING:
                self._answer(lease_id, f"refused: the container at {url} is being removed")
                return
            container.wait_free(0.2)
        else:
            return
        with self._lock:
            self.held[lease_id] = container
        self._answer(lease_id, slot_lease.GRANTED)
        if not self.r.exists(self.keys.slot_lease(lease_id)):  # released or expired meanwhile
            self.release(lease_id)

    def release(self, lease_id: str) -> None:
        with self._lock:
            container = self.held.pop(lease_id, None)
        if container is not None:
            container.release()

    def sweep(self) -> list[str]:
        """Give back the slots of leases whose holder stopped renewing them."""
        with self._lock:
            ids = list(self.held)
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for lease_id in ids:
            pipe.exists(self.keys.slot_lease(lease_id))
        gone = [lease_id for lease_id, alive in zip(ids, pipe.execute(), strict=True) if not alive]
        for lease_id in gone:
            log.info("slot lease %s expired; its slot is free again", lease_id)
            self.release(lease_id)
        return gone
