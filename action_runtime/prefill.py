"""KV caches prepared ahead of a resume (the destination side of a token-based migration).

While the source keeps decoding, the destination receives the tokens so far in rounds and
extends a cache each time; the resume then has only the last few tokens left to compute.
At most ``capacity`` sessions are held (least recently used dropped first); a session is
taken out while a run uses it, so two runs never share a cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class PrefillState:
    ids: list[int]
    cache: Any
    logits: Any
    """Logits after the last of ``ids`` (the next token's distribution)."""


class PrefillSessions:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, PrefillState] = OrderedDict()

    def take(self, session: str) -> PrefillState | None:
        with self._lock:
            return self._sessions.pop(session, None)

    def put(self, session: str, state: PrefillState) -> None:
        with self._lock:
            self._sessions[session] = state
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.capacity:
                self._sessions.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
