"""Actions as this gateway worker last read them, for building invocations without a read.

An entry is a guess, never trusted alone: the admission script compares the SHA-1 of the JSON the
entry was parsed from with the stored action's, atomically with queueing
(:meth:`faas_llm.limits.Limiter.admit_if_current`), and when the action was updated or deleted it
queues nothing and returns the stored JSON, which replaces the entry. So an invocation is queued only
as the current definition says (as exact as reading the action first; the read and the queueing are
now one atomic step), and a warm invoke costs one Redis round trip less.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from faas_llm.actions_store import ActionStore
from faas_llm.errors import NotFoundError
from faas_llm.limits import action_digest
from faas_llm.types import Action


@dataclass(frozen=True)
class CachedAction:
    action: Action
    #: the action's Redis key
    key: str
    #: :func:`action_digest` of the stored JSON ``action`` was parsed from
    digest: str


class DigestCheckedActions:
    """The actions this worker read, each kept with the digest the admission script checks it by (so an
    entry never expires: it is replaced when the script finds it stale). At most ``max_entries`` (cleared
    when full: a worker serves few actions at a time). Unlike the invoker's time-limited
    ``invoker.cluster.ActionCache``, nothing is acted on from an entry without that check."""

    def __init__(self, store: ActionStore, max_entries: int = 4096) -> None:
        self.store = store
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], CachedAction] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[str, str]) -> bool:
        """Whether ``(namespace, name)`` has an entry (a guess, as every entry is)."""
        return key in self._entries

    def get(self, namespace: str, name: str) -> CachedAction:
        """The cached entry, else the stored action (read now); :class:`NotFoundError` if none."""
        cached = self._entries.get((namespace, name))
        if cached is not None:
            return cached
        key = self.store.keys.action(namespace, name)
        return self.replace(namespace, name, self.store.r.get(key))

    def replace(self, namespace: str, name: str, raw: str | bytes | None) -> CachedAction:
        """The entry for the stored JSON ``raw`` (``None``: the action does not exist: forget it and
        raise :class:`NotFoundError`)."""
        if raw is None:
            self.forget(namespace, name)
            raise NotFoundError()
        cached = CachedAction(Action.model_validate_json(raw), self.store.keys.action(namespace, name),
                              action_digest(raw))
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[(namespace, name)] = cached
        return cached

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._entries.pop((namespace, name), None)
