"""Publishing the agent's inventory to Redis (``keys.node_cache(node)``, with a TTL), so the
placement policy can estimate load times: what each tier holds, free bytes, measured read
bandwidth per tier, and the pending loads. A dead agent's inventory expires."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.types import CacheInventory

log = logging.getLogger(__name__)


class InventoryPublisher:
    """Publishes ``snapshot()`` every third of the TTL, and at once after :meth:`poke`."""

    def __init__(self, settings: Settings, snapshot: Callable[[], CacheInventory]) -> None:
        self.key = Keys(settings.key_prefix).node_cache(settings.node_id)
        self.ttl_ms = max(1, int(settings.inventory_ttl_s * 1000))
        self.interval = settings.inventory_ttl_s / 3
        self.snapshot = snapshot
        self.client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-inventory", daemon=True)
        self.published = 0

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def publish(self) -> None:
        inventory = self.snapshot()
        self.client.set(self.key, inventory.model_dump_json(), px=self.ttl_ms)
        self.published += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish()
            except redis.RedisError as exc:  # Redis may come back; the TTL covers the gap
                log.warning("cache inventory: cannot publish to Redis: %s", exc)
            self._wake.wait(self.interval)
            self._wake.clear()

    def stop(self, *, withdraw: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if withdraw:
            try:
                self.client.delete(self.key)
            except redis.RedisError:
                pass
        self.client.close()
