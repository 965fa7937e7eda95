"""Reading and writing the cluster's shared state: node reports, cache inventories, actions, model sizes.

- Node reports (:class:`~faas_llm.types.NodeReport`) at ``keys.node(id)`` with a TTL of
  ``settings.node_ttl_s`` (a dead node disappears), indexed in ``keys.nodes_index()``.
- Cache inventories (:class:`~faas_llm.types.CacheInventory`) at ``keys.node_cache(id)``, written
  by the cache agents; a node without one is treated as holding nothing locally.
- Actions (:class:`~faas_llm.types.Action`) at ``keys.action(ns, name)``, written by the gateway.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from faas_llm.keys import Keys
from faas_llm.settings import Settings
from faas_llm.types import Action, CacheInventory, NodeReport, now_ms

log = logging.getLogger(__name__)
#: size assumed for a checkpoint whose size cannot be read (a remote registry)
DEFAULT_MODEL_BYTES = 1 << 30


def publish_report(r: Any, keys: Keys, report: NodeReport, ttl_s: float) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.node(report.node), report.model_dump_json(), px=max(1, int(ttl_s * 1000)))
    pipe.zadd(keys.nodes_index(), {report.node: report.ts})
    pipe.execute()


def withdraw_report(r: Any, keys: Keys, node: str) -> None:
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.node(node))
    pipe.zrem(keys.nodes_index(), node)
    pipe.execute()


def read_reports(r: Any, keys: Keys) -> list[NodeReport]:
    """Live node reports (expired ones are dropped from the index)."""
    nodes = [n.decode() if isinstance(n, bytes) else n for n in r.zrange(keys.nodes_index(), 0, -1)]
    if not nodes:
        return []
    raws = r.mget([keys.node(n) for n in nodes])
    out: list[NodeReport] = []
    dead: list[str] = []
    for node, raw in zip(nodes, raws, strict=True):
        if raw is None:
            dead.append(node)
            continue
        try:
            out.append(NodeReport.model_validate_json(raw))
        except ValidationError:
            log.warning("ignoring a malformed report of node %s", node)
    if dead:
        r.zrem(keys.nodes_index(), *dead)
    return out


def read_inventories(r: Any, keys: Keys, nodes: list[str]) -> dict[str, CacheInventory]:
    if not nodes:
        return {}
    out: dict[str, CacheInventory] = {}
    for node, raw in zip(nodes, r.mget([keys.node_cache(n) for n in nodes]), strict=True):
        if raw is None:
            continue
        try:
            out[node] = CacheInventory.model_validate_json(raw)
        except ValidationError:
            log.warning("ignoring a malformed cache inventory of node %s", node)
    return out


class ActionDefinitions:
    """Action definitions read through from Redis, each kept ``ttl_s`` (1 s): a changed or deleted action
    reaches this invoker within ``ttl_s``, with no invalidation (unlike the gateway's cache, which the
    admission script checks against the stored definition on every invoke)."""

    def __init__(self, r: Any, keys: Keys, ttl_s: float = 1.0) -> None:
        self.r, self.keys, self.ttl_s = r, keys, ttl_s
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, Action | None]] = {}

    def get(self, namespace: str, name: str) -> Action | None:
        key = (namespace, name)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        raw = self.r.get(self.keys.action(namespace, name))
        action: Action | None = None
        if raw is not None:
            try:
                action = Action.model_validate_json(raw)
            except ValidationError:
                log.warning("ignoring a malformed action %s/%s", namespace, name)
        with self._lock:
            self._cache[key] = (now, action)
        return action


class ModelSizes:
    """Checkpoint sizes: the bytes under ``<registry dir>/<model>`` of a ``file://`` registry."""

    def __init__(self, settings: Settings) -> None:
        url = settings.registry
        self.root = Path(url.removeprefix("file://")) if url.startswith("file://") else None
        self._sizes: dict[str, int] = {}

    def size(self, model: str) -> int:
        if model in self._sizes:
            return self._sizes[model]
        size = DEFAULT_MODEL_BYTES
        if self.root is not None and (self.root / model).is_dir():
            size = sum(p.stat().st_size for p in (self.root / model).rglob("*") if p.is_file()) or size
        self._sizes[model] = size
        return size


def report_now(node: str, **fields: Any) -> NodeReport:
    return NodeReport(node=node, ts=now_ms(), **fields)
