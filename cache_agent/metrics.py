"""Prometheus metrics of one cache agent (its own CollectorRegistry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.hits = Counter("faas_cache_hits", "Acquires served from a tier without a load from a slower one",
                            ["tier"], registry=r)
        self.misses = Counter("faas_cache_misses", "Acquires/prefetches that missed a tier", ["tier"], registry=r)
        self.bytes_loaded = Counter("faas_cache_bytes_loaded", "Bytes loaded into a tier", ["tier"], registry=r)
        self.load_seconds = Histogram("faas_cache_load_seconds", "Seconds to load a checkpoint into a tier",
                                      ["tier"], buckets=LOAD_BUCKETS, registry=r)
        self.evictions = Counter("faas_cache_evictions", "Checkpoints evicted from a tier", ["tier"], registry=r)
        self.corrupt = Counter("faas_cache_corrupt_entries", "SSD entries found corrupt and fetched again",
                               registry=r)
        self.used_bytes = Gauge("faas_cache_used_bytes", "Bytes held per tier", ["tier"], registry=r)
        self.capacity_bytes = Gauge("faas_cache_capacity_bytes", "Capacity per tier", ["tier"], registry=r)
        self.leases = Gauge("faas_cache_leases", "Live client leases", registry=r)
        self.page_bytes = Gauge("faas_cache_dram_page_bytes",
                                "Page size of the DRAM pool (4096; 2097152 on huge pages: see docs/deploy.md)",
                                registry=r)
        self.pending = Gauge("faas_cache_pending_loads", "Loads queued or in flight", registry=r)

    def text(self) -> str:
        return generate_latest(self.registry).decode()
