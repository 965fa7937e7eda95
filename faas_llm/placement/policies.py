"""The startup-time policies: ours (``locality``) and ServerlessLLM's storage-aware rule (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from faas_llm.placement.model import (
    Decision,
    NodeView,
    PlacementRequest,
    load_decision,
    soonest,
    startable_nodes,
    warm_wait_bounded,
)
from faas_llm.types import LoadTier


@dataclass
class LocalityPolicy:
    """Ours: min over nodes of (warm wait, queue + size / bw of the fastest holding tier)."""

    name: str = "locality"
    #: consider waiting for busy warm instances (off: only start new instances)
    use_warm: bool = True
    #: wait for a busy instance only when its expected free time plus ``warm_z`` standard deviations (where the
    #: views carry them: ``warm_busy_sd_s``) is <= the best load: a load's time is nearly deterministic, a busy
    #: instance's free time is not; 0 is the plain comparison of expectations
    warm_z: float = 1.0

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        loads = [load_decision(request, n) for n in nodes if n.can_start(request.memory_mb)]
        best_load = soonest(loads)
        warms: list[tuple[float, Decision]] = []
        if self.use_warm:
            for node in nodes:
                got = warm_wait_bounded(node, self.warm_z)
                if got is not None:
                    warms.append((got[1], Decision(node.node, got[0], LoadTier.WARM)))
        if not warms:
            return best_load
        upper, best_warm = min(warms, key=lambda w: (w[0], w[1].startup_s, w[1].node))
        if best_load is None or upper <= best_load.startup_s:
            return best_warm
        return best_load


@dataclass
class ServerlessLLMPolicy:
    """ServerlessLLM's storage-aware rule (DRAM: size/bw_dram; SSD: queue + size/bw_ssd)."""

    name: str = "serverlessllm"
    registry_fallback: bool = True

    def choose(self, request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision | None:
        startable = startable_nodes(request, nodes)
        options: list[Decision] = []
        for node in startable:
            if node.in_dram:
                options.append(Decision(node.node, request.size_bytes / node.bandwidth(LoadTier.DRAM), LoadTier.DRAM))
            elif node.in_ssd:
                seconds = node.queue_seconds() + request.size_bytes / node.bandwidth(LoadTier.SSD)
                options.append(Decision(node.node, seconds, LoadTier.SSD))
        if options or not self.registry_fallback:
            return soonest(options)
        return soonest(
            Decision(n.node, n.queue_seconds() + request.size_bytes / n.bandwidth(LoadTier.REGISTRY), LoadTier.REGISTRY)
            for n in startable
        )
