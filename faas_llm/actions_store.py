"""Actions in Redis: ``P:ns:{ns}:action:{name}`` (the action JSON) and ``P:ns:{ns}:actions``
(an index of names scored by last update, newest first when listed).

Writes are optimistic transactions (WATCH/MULTI), so a concurrent create of the same
name yields exactly one winner and one :class:`~faas_llm.errors.ConflictError`. An action stored
with ``scaling.min_instances > 0`` also registers its queue in ``keys.queues_index()`` (the stream
itself need not exist), so the invokers start its minimum instances without any invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from faas_llm.errors import ConflictError, NotFoundError
from faas_llm.keys import Keys
from faas_llm.types import Action


def bump_version(version: str) -> str:
    """``0.0.1`` -> ``0.0.2`` (OpenWhisk bumps the patch level on every update)."""
    parts = version.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{parts[0]}.{parts[1]}.{int(parts[2]) + 1}"
    return version


class ActionStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r: Any = client
        self.keys = keys

    def put(
        self, namespace: str, name: str, build: Callable[[Action | None], Action], *, overwrite: bool = False
    ) -> Action:
        """Create (or with ``overwrite`` replace) an action.

        ``build(existing)`` makes the action to store from the stored one (``None`` when
        there is none); it may raise to refuse. Without ``overwrite`` an existing action
        raises :class:`ConflictError`.
        """
        key = self.keys.action(namespace, name)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    existing = Action.model_validate_json(raw) if raw else None
                    if existing is not None and not overwrite:
                        raise ConflictError()
                    action = build(existing)
                    pipe.multi()
                    pipe.set(key, action.model_dump_json())
                    pipe.zadd(self.keys.actions_index(namespace), {name: action.updated})
                    if action.scaling.min_instances > 0:
                        # the invokers' scheduler ticks over the queues index: it starts min_instances
                        # before the first invocation (whose submit registers the queue otherwise)
                        pipe.sadd(self.keys.queues_index(), self.keys.action_queue(namespace, name))
                    pipe.execute()
                    return action
                except redis.WatchError:
                    continue

    def get(self, namespace: str, name: str) -> Action:
        raw = self.r.get(self.keys.action(namespace, name))
        if raw is None:
            raise NotFoundError()
        return Action.model_validate_json(raw)

    def find(self, namespace: str, name: str) -> Action | None:
        raw = self.r.get(self.keys.action(namespace, name))
        return Action.model_validate_json(raw) if raw else None

    def list(self, namespace: str, *, skip: int = 0, limit: int = 30) -> list[Action]:
        """Most recently updated first."""
        if limit <= 0:
            return []
        names = self.r.zrevrange(self.keys.actions_index(namespace), skip, skip + limit - 1)
        if not names:
            return []
        keys = [self.keys.action(namespace, n.decode() if isinstance(n, bytes) else n) for n in names]
        return [Action.model_validate_json(raw) for raw in self.r.mget(keys) if raw]

    def count(self, namespace: str) -> int:
        return int(self.r.zcard(self.keys.actions_index(namespace)))

    def delete(self, namespace: str, name: str) -> Action:
        """Remove an action; returns what was stored."""
        key = self.keys.action(namespace, name)
        pipe = self.r.pipeline(transaction=True)
        pipe.get(key)
        pipe.delete(key)
        pipe.zrem(self.keys.actions_index(namespace), name)
        raw, _, _ = pipe.execute()
        if raw is None:
            raise NotFoundError()
        return Action.model_validate_json(raw)

    def delete_all(self, namespace: str) -> int:
        """Remove every action of a namespace; returns how many."""
        index = self.keys.actions_index(namespace)
        names = [n.decode() if isinstance(n, bytes) else n for n in self.r.zrange(index, 0, -1)]
        pipe = self.r.pipeline(transaction=True)
        for name in names:
            pipe.delete(self.keys.action(namespace, name))
        pipe.delete(self.keys.actions_index(namespace))
        pipe.execute()
        return len(names)
