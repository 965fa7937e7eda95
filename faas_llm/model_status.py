"""Progress and outcome of background work on a model, per node (``faas-llm model status``).

One hash per model (``keys.model_status(model)``): field = node id, value = a
:class:`NodeModelStatus` JSON. Prefetch tasks write it as they go (queued -> running ->
done / failed; ``rerouted`` when the rescuer moved the work off a dead node); ``attempts``
counts deliveries, so a redelivered task shows 2.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from faas_llm.keys import Keys
from faas_llm.types import now_ms

State = Literal["queued", "running", "done", "failed", "rerouted"]


class NodeModelStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str
    tier: Literal["dram", "ssd"]
    state: State
    task_id: str | None = None
    attempts: int = 0
    version: int | None = None
    queued_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    seconds: float | None = None
    error: str | None = None
    note: str | None = None


class ModelStatusStore:
    """Read and update ``keys.model_status`` (one WATCHed transaction per update)."""

    def __init__(self, r: Any, keys: Keys) -> None:
        self.r = r
        self.keys = keys

    def get(self, model: str) -> dict[str, NodeModelStatus]:
        raw = self.r.hgetall(self.keys.model_status(model))
        out: dict[str, NodeModelStatus] = {}
        for node, value in raw.items():
            node = node.decode() if isinstance(node, bytes) else node
            try:
                out[node] = NodeModelStatus.model_validate_json(value)
            except ValidationError:
                continue
        return out

    def models(self) -> list[str]:
        """Models with a status (SCAN over ``model:*:status``)."""
        pattern = self.keys.model_status("*")
        head, tail = pattern.split("*", 1)
        names = []
        for key in self.r.scan_iter(match=pattern, count=500):
            key = key.decode() if isinstance(key, bytes) else key
            names.append(key[len(head): len(key) - len(tail)])
        return sorted(names)

    def _update(self, model: str, node: str, tier: Literal["dram", "ssd"], attempt: bool = False,
                **changes: Any) -> NodeModelStatus:
        key = self.keys.model_status(model)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, node)
                    current = NodeModelStatus.model_validate_json(raw) if raw else None
                    if current is None or current.tier != tier:
                        current = NodeModelStatus(node=node, tier=tier, state="queued")
                    attempts = int(changes.get("attempts", current.attempts)) + int(attempt)
                    updated = current.model_copy(update={**changes, "attempts": attempts})
                    pipe.multi()
                    pipe.hset(key, node, updated.model_dump_json())
                    pipe.execute()
                    return updated
                except redis.WatchError:
                    continue  # someone wrote in between: read again

    def queued(self, model: str, node: str, tier: Literal["dram", "ssd"], task_id: str) -> NodeModelStatus:
        return self._update(model, node, tier, state="queued", task_id=task_id, queued_ms=now_ms(), error=None,
                            attempts=0, finished_ms=None, seconds=None, note=None)

    def running(self, model: str, node: str, tier: Literal["dram", "ssd"], task_id: str) -> NodeModelStatus:
        return self._update(model, node, tier, state="running", task_id=task_id, started_ms=now_ms(), error=None,
                            attempt=True)

    def done(self, model: str, node: str, tier: Literal["dram", "ssd"], version: int,
             started: float) -> NodeModelStatus:
        return self._update(model, node, tier, state="done", version=version, finished_ms=now_ms(),
                            seconds=round(time.monotonic() - started, 4), error=None)

    def failed(self, model: str, node: str, tier: Literal["dram", "ssd"], error: str) -> NodeModelStatus:
        return self._update(model, node, tier, state="failed", finished_ms=now_ms(), error=error)

    def rerouted(self, model: str, node: str, tier: Literal["dram", "ssd"], to_node: str) -> NodeModelStatus:
        return self._update(model, node, tier, state="rerouted", finished_ms=now_ms(),
                            note=f"node {node} is dead; moved to {to_node}")


def status_rows(statuses: dict[str, NodeModelStatus]) -> list[dict[str, Any]]:
    """Rows for a table / ``--json``: one per node, sorted by node."""
    return [statuses[n].model_dump() for n in sorted(statuses)]

