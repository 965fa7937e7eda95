"""The ``Authorization`` headers a gateway worker verified, so the invoke routes take them without a read.

Only verified headers enter; each stands for its identity, which carries the
:class:`~faas_llm.auth.KeyCheck` the admission script confirms (see :mod:`gateway.http_auth`).
"""

from __future__ import annotations

import threading

from faas_llm.auth import Identity


class CredentialCache:
    """``Authorization`` headers this worker verified, with the identity they stand for (carrying its
    :class:`~faas_llm.auth.KeyCheck`). Only verified headers enter; at most ``max_entries`` (cleared
    when full)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, Identity] = {}
        self._lock = threading.Lock()

    def get(self, header: str) -> Identity | None:
        return self._entries.get(header)

    def put(self, header: str, identity: Identity) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[header] = identity

    def forget(self, header: str) -> None:
        with self._lock:
            self._entries.pop(header, None)
