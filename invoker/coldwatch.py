"""Wake the scheduler the moment an invocation arrives for an action that has no instance.

The scheduler's periodic tick (every ``heartbeat_interval_s``) would leave a cold start waiting up
to a whole interval before any placement happens. This watcher blocks on ``XREAD`` over the queues
of actions with no instance (none in this node's pool, none in the other nodes' last reports) and
calls ``on_arrival`` (a scheduling pass of those queues) as soon as one of them gets an entry. Queues of actions
that have instances are not watched: their warm containers pull the work, and scale-out stays on
the periodic tick, so the warm path pays nothing for this.

Entry ids are followed per queue, so nothing that arrives between two reads is missed; a queue
newly watched is read from its start (any entry in a queue with no instance is waiting work).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from faas_llm.keys import Keys
from invoker import streams

log = logging.getLogger(__name__)
BLOCK_MS = 200


class ColdWatch:
    def __init__(self, r: Any, keys: Keys, has_instance: Callable[[str, str], bool],
                 on_arrival: Callable[[list[str]], None], stopping: threading.Event, block_ms: int = BLOCK_MS) -> None:
        self.r, self.keys = r, keys
        self.has_instance = has_instance
        self.on_arrival = on_arrival
        self.stopping = stopping
        self.block_ms = block_ms
        self.after: dict[str, str] = {}  # queue -> last entry id seen

    def watched(self) -> list[str]:
        """Queues of actions with no instance anywhere (as far as this node knows now)."""
        out = []
        for queue in sorted(self.r.smembers(self.keys.queues_index())):
            target = streams.queue_action(self.keys, queue)
            if target is not None and not self.has_instance(*target):
                out.append(queue)
        return out

    def poll_once(self) -> bool:
        """One blocking read; True when work arrived for an action without instances (``on_arrival`` ran)."""
        queues = self.watched()
        self.after = {q: self.after.get(q, "0-0") for q in queues}
        if not queues:
            self.stopping.wait(self.block_ms / 1000)
            return False
        resp = self.r.xread(dict(self.after), count=64, block=self.block_ms)
        if not resp:
            return False
        arrived = []
        for queue, entries in resp:
            if entries:
                self.after[queue] = str(entries[-1][0])
                arrived.append(queue)
        self.on_arrival(arrived)
        return True

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except redis.ConnectionError:
                self.stopping.wait(0.5)
            except Exception:
                log.exception("cold-start watch failed; retrying")
                self.stopping.wait(0.5)
