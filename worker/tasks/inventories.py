"""What the worker reads of the nodes' caches (the cache agents' inventories in Redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from faas_llm.prefetch_policy import NodeCache
from faas_llm.types import CacheInventory

if TYPE_CHECKING:
    from faas_llm.jobs import FaasCelery


def node_caches(app: FaasCelery, nodes: list[str]) -> list[NodeCache]:
    raws = app.redis.mget([app.keys.node_cache(n) for n in nodes]) if nodes else []
    out = []
    for node, raw in zip(nodes, raws, strict=True):
        inv = None
        if raw:
            try:
                inv = CacheInventory.model_validate_json(raw)
            except ValidationError:
                inv = None
        if inv is None:
            out.append(NodeCache(node))
        else:
            out.append(NodeCache(node, frozenset(inv.dram.models) | frozenset(inv.pending_loads),
                                 frozenset(inv.ssd.models), inv.dram.free_bytes, inv.ssd.free_bytes))
    return out
