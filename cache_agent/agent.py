"""The cache agent's core: DRAM and SSD tiers of whole checkpoints, leases, single-flight loads.

No sockets here (see :mod:`cache_agent.server`); every public method is thread-safe and
is what one protocol request does. A checkpoint is identified by its registry key
``name@version``. Flow of an acquire::

    registry.resolve(name) -> in DRAM? lease it (a DRAM hit)
      else (one load per key, whoever asks) -> in SSD? else fetch from the registry into SSD
      -> reserve a DRAM extent (evicting LRU checkpoints nobody leases) -> read_into the
      extent with checksums (a corrupt SSD entry is deleted, fetched again, read again)
      -> lease it

A lease lives ``ttl_s`` unless the client heartbeats it; a sweeper drops expired leases,
so a crashed client does not pin memory forever.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cache_agent.metrics import AgentMetrics
from cache_agent.policy import (
    Extents,
    Resident,
    align_up,
    allocate,
    choose_dram_victims,
    ema,
    expired_leases,
    free_bytes,
    release,
)
from cache_agent.pool import ALIGNMENT, DramPool
from cache_agent.ssd import SsdEntry, SsdTier
from faas_llm.cache_protocol import (
    AcquireMeta,
    AcquireReply,
    AcquireRequest,
    EntryStatus,
    EvictReply,
    EvictRequest,
    HeartbeatReply,
    PrefetchReply,
    PrefetchRequest,
    StatusReply,
    ssd_entry_dir,
)
from faas_llm.checkpoint import INDEX_FILE, CheckpointIndex, checkpoint_nbytes, read_index, read_into
from faas_llm.errors import CheckpointError, ConflictError, NoCapacityError, NotFoundError, RegistryError
from faas_llm.registry import ModelVersion, Registry, open_registry
from faas_llm.settings import Settings
from faas_llm.types import CacheInventory, LoadTier, TierInventory

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class DramEntry:
    manifest: ModelVersion
    offset: int
    extent: int
    nbytes: int
    index_text: str
    meta_dir: Path
    last_used: float
    leases: set[str] = field(default_factory=set)


@dataclass
class Lease:
    id: str
    key: str
    pid: int
    ttl_s: float
    deadline: float


class CacheAgent:
    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or open_registry(settings)
        self.metrics = AgentMetrics()
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._dram_flights: dict[str, tuple[Future[LoadTier], ModelVersion]] = {}
        self._ssd_flights: dict[str, tuple[Future[SsdEntry], ModelVersion]] = {}
        self.dram: dict[str, DramEntry] = {}
        self.leases: dict[str, Lease] = {}
        settings.node_dir.mkdir(parents=True, exist_ok=True)
        self.meta_root = settings.node_dir / "meta"
        shutil.rmtree(self.meta_root, ignore_errors=True)
        self.ssd = SsdTier(settings.ssd_path, settings.ssd_capacity_bytes)
        self.reindexed_broken = self.ssd.reindex()
        self.pool = DramPool(settings.dram_pool_dir, f"{settings.key_prefix}-{settings.node_id}",
                             settings.dram_capacity_bytes)
        self.free: Extents = ((0, self.pool.capacity),)
        self.bandwidth: dict[str, float] = {
            "dram": self.pool.measure_bandwidth(), "ssd": self.ssd.measure_read_bandwidth(), "registry": 0.0,
        }
        self.metrics.capacity_bytes.labels("dram").set(self.pool.capacity)
        self.metrics.page_bytes.set(self.pool.page_bytes)
        self.metrics.capacity_bytes.labels("ssd").set(self.ssd.capacity)
        self._on_change: Callable[[], None] = lambda: None
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="cache-lease-sweeper", daemon=True)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, on_change: Callable[[], None] | None = None) -> None:
        if on_change is not None:
            self._on_change = on_change
        self._sweeper.start()

    def close(self) -> None:
        self._stop.set()
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=5)
        self.pool.close()
        shutil.rmtree(self.meta_root, ignore_errors=True)

    def _changed(self) -> None:
        with self._lock:
            used = self.pool.capacity - free_bytes(self.free)
            self.metrics.used_bytes.labels("dram").set(used)
            self.metrics.leases.set(len(self.leases))
            self.metrics.pending.set(len(self._dram_flights) + len(self._ssd_flights))
        self.metrics.used_bytes.labels("ssd").set(self.ssd.used)
        self._on_change()

    # --- requests ---------------------------------------------------------------------------
    def acquire(self, req: AcquireRequest, on_meta: Callable[[AcquireMeta], None] | None = None) -> AcquireReply:
        """Lease ``req.model`` in DRAM (loading it first if needed). ``on_meta`` is called once, before
        the read, when this call runs the load and the meta files are in place (``req.early_meta``)."""
        started = time.perf_counter()
        manifest = self._resolve(req.model, req.version)
        key = manifest.key
        tier = LoadTier.DRAM
        for _ in range(3):  # a just-loaded checkpoint evicted before we lease it: load again
            with self._lock:
                entry = self.dram.get(key)
                if entry is not None:
                    ttl = req.ttl_s or self.settings.lease_ttl_s
                    lease = Lease(uuid.uuid4().hex, key, req.pid, ttl, time.monotonic() + ttl)
                    self.leases[lease.id] = lease
                    entry.leases.add(lease.id)
                    entry.last_used = time.time()
                    if tier is LoadTier.DRAM:
                        self.metrics.hits.labels("dram").inc()
                    reply = AcquireReply(
                        lease_id=lease.id, model=manifest.name, version=manifest.version, tier=tier,
                        segment=str(self.pool.path), offset=entry.offset, nbytes=entry.nbytes,
                        index=entry.index_text, meta_dir=str(entry.meta_dir), ttl_s=ttl,
                        load_s=time.perf_counter() - started, page_bytes=self.pool.page_bytes,
                    )
                    break
            tier = self._single_flight(self._dram_flights, manifest, lambda: self._load_dram(manifest, on_meta))
        else:
            raise NoCapacityError(f"{key} keeps being evicted before it can be leased: the DRAM tier is thrashing")
        self._changed()
        return reply

    def release(self, lease_id: str) -> bool:
        with self._lock:
            lease = self.leases.pop(lease_id, None)
            if lease is None:
                return False
            entry = self.dram.get(lease.key)
            if entry is not None:
                entry.leases.discard(lease_id)
                entry.last_used = time.time()
        self._changed()
        return True

    def heartbeat(self, lease_ids: list[str]) -> HeartbeatReply:
        now = time.monotonic()
        expired = []
        with self._lock:
            for lease_id in lease_ids:
                lease = self.leases.get(lease_id)
                if lease is None:
                    expired.append(lease_id)
                else:
                    lease.deadline = now + lease.ttl_s
        return HeartbeatReply(expired=expired)

    def prefetch(self, req: PrefetchRequest) -> PrefetchReply:
        manifest = self._resolve(req.model, req.version)

        def run() -> None:
            if req.tier == "ssd":
                self._ensure_ssd(manifest)
            elif manifest.key in self.dram:
                with self._lock:
                    entry = self.dram.get(manifest.key)
                    if entry is not None:
                        entry.last_used = time.time()
            else:
                self._single_flight(self._dram_flights, manifest, lambda: self._load_dram(manifest))
            self._changed()

        if req.wait:
            run()
        else:
            def background() -> None:
                try:
                    run()
                except Exception as exc:
                    log.warning("prefetch of %s to %s failed: %s", manifest.key, req.tier, exc)

            threading.Thread(target=background, name=f"prefetch-{manifest.key}", daemon=True).start()
        return PrefetchReply(model=manifest.name, version=manifest.version, done=req.wait)

    def evict(self, req: EvictRequest) -> EvictReply:
        """Drop ``model`` (one version or all) from a tier now; ConflictError if a lease or a read holds it."""
        def wanted(manifest: ModelVersion) -> bool:
            return manifest.name == req.model and req.version in (None, manifest.version)

        evicted: list[str] = []
        if req.tier == "dram":
            with self._lock:
                keys = [k for k, e in self.dram.items() if wanted(e.manifest)]
                busy = [k for k in keys if self.dram[k].leases]
                if busy:
                    raise ConflictError(f"{', '.join(busy)} is in use (leased); not evicted")
                for key in keys:
                    self._evict_dram_locked(key)
                evicted = keys
        else:
            for entry in self.ssd.entries():
                if wanted(entry.manifest):
                    if not self.ssd.remove(entry.key, unless_pinned=True):
                        raise ConflictError(f"{entry.key} is being read from the SSD tier; not evicted")
                    evicted.append(entry.key)
                    with self._lock:
                        self.counters["ssd_evictions"] += 1
                    self.metrics.evictions.labels("ssd").inc()
        self._changed()
        return EvictReply(evicted=evicted)

    def status(self) -> StatusReply:
        with self._lock:
            dram = [EntryStatus(key=k, nbytes=e.nbytes, last_used=e.last_used, leases=len(e.leases), offset=e.offset)
                    for k, e in self.dram.items()]
            dram_free = free_bytes(self.free)
            leases = len(self.leases)
            pending = sorted({*self._dram_flights, *self._ssd_flights})
            counters = dict(self.counters)
            bandwidth = dict(self.bandwidth)
        ssd = [EntryStatus(key=e.key, nbytes=e.nbytes, last_used=e.last_used) for e in self.ssd.entries()]
        return StatusReply(
            node=self.settings.node_id, segment=str(self.pool.path), dram_capacity=self.pool.capacity,
            dram_free=dram_free, ssd_capacity=self.ssd.capacity, ssd_used=self.ssd.used, dram=dram, ssd=ssd,
            leases=leases, pending=pending, counters=counters, bandwidth=bandwidth,
            dram_page_bytes=self.pool.page_bytes, dram_huge_share=self.pool.huge_share,
        )

    def inventory(self) -> CacheInventory:
        with self._lock:
            dram_models = sorted({e.manifest.name for e in self.dram.values()})
            dram_free = free_bytes(self.free)
            pending = {**{k: m for k, (_, m) in self._ssd_flights.items()},
                       **{k: m for k, (_, m) in self._dram_flights.items()}}
            bandwidth = dict(self.bandwidth)
        entries = self.ssd.entries()
        return CacheInventory(
            node=self.settings.node_id,
            dram=TierInventory(models=dram_models, capacity_bytes=self.pool.capacity, free_bytes=dram_free,
                               read_bandwidth=bandwidth["dram"]),
            ssd=TierInventory(models=sorted({e.manifest.name for e in entries}), capacity_bytes=self.ssd.capacity,
                              free_bytes=max(0, self.ssd.capacity - self.ssd.used), read_bandwidth=bandwidth["ssd"]),
            registry_bandwidth=bandwidth["registry"],
            pending_loads=sorted({m.name for m in pending.values()}),
            pending_bytes=sum(m.nbytes for m in pending.values()),
        )

    # --- internals ----------------------------------------------------------------------------
    def _resolve(self, name: str, version: int | None) -> ModelVersion:
        """The registry's manifest; when the registry is unreachable, the newest local copy."""
        try:
            return self.registry.resolve(name, version)
        except NotFoundError:
            raise
        except RegistryError as exc:
            with self._lock:
                local = [e.manifest for e in self.dram.values() if e.manifest.name == name]
            local += [e.manifest for e in self.ssd.entries() if e.manifest.name == name]
            if version is not None:
                local = [m for m in local if m.version == version]
            if not local:
                raise
            log.warning("registry unavailable (%s); serving the local copy of %s", exc, name)
            return max(local, key=lambda m: m.version)

    def _single_flight(self, flights: dict[str, tuple[Future[T], ModelVersion]], manifest: ModelVersion,
                       work: Callable[[], T]) -> T:
        """Run ``work`` once per key however many threads ask at the same time; all get its result."""
        with self._lock:
            flight = flights.get(manifest.key)
            owner = flight is None
            if flight is None:
                flight = (Future(), manifest)
                flights[manifest.key] = flight
        future = flight[0]
        if not owner:
            return future.result()
        self._changed()
        try:
            result = work()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                flights.pop(manifest.key, None)
            future.exception()  # mark a failure as seen by the owner (no "never retrieved" noise)

    def _ensure_ssd(self, manifest: ModelVersion) -> tuple[SsdEntry, LoadTier]:
        entry = self.ssd.get(manifest.key)
        if entry is not None:
            self.ssd.touch(manifest.key)
            return entry, LoadTier.SSD

        def fetch_into_ssd() -> SsdEntry:
            self.metrics.misses.labels("ssd").inc()
            timing: list[float] = []

            def fetch(tmp: Path) -> None:
                started = time.perf_counter()
                self.registry.fetch(manifest, tmp)
                timing.append(time.perf_counter() - started)

            started = time.perf_counter()
            installed, evicted = self.ssd.install(manifest, fetch)
            elapsed = time.perf_counter() - started
            with self._lock:
                self.counters["registry_fetches"] += 1
                self.counters["ssd_evictions"] += len(evicted)
                if timing and timing[0] > 0:
                    self.bandwidth["registry"] = ema(self.bandwidth["registry"], manifest.nbytes / timing[0])
            self.metrics.bytes_loaded.labels("ssd").inc(manifest.nbytes)
            self.metrics.load_seconds.labels("ssd").observe(elapsed)
            self.metrics.evictions.labels("ssd").inc(len(evicted))
            return installed

        return self._single_flight(self._ssd_flights, manifest, fetch_into_ssd), LoadTier.REGISTRY

    def _reserve_dram(self, key: str, nbytes: int) -> tuple[int, int]:
        """A DRAM extent for ``nbytes`` (evicting LRU checkpoints not in use); (offset, extent size)."""
        extent = align_up(max(nbytes, 1), ALIGNMENT)
        with self._lock:
            residents = [Resident(k, e.extent, e.last_used, bool(e.leases), e.offset) for k, e in self.dram.items()]
            victims = choose_dram_victims(residents, self.free, extent, ALIGNMENT)
            if victims is None:
                raise NoCapacityError(
                    f"{key} ({nbytes} bytes) does not fit in the DRAM tier ({self.pool.capacity} bytes) "
                    "even after evicting every checkpoint not in use"
                )
            for victim in victims:
                self._evict_dram_locked(victim)
            placed = allocate(self.free, extent, ALIGNMENT)
            assert placed is not None  # the policy promised room
            offset, self.free = placed
        return offset, extent

    def _evict_dram_locked(self, key: str) -> None:
        entry = self.dram.pop(key)
        self.free = release(self.free, entry.offset, entry.extent)
        shutil.rmtree(entry.meta_dir, ignore_errors=True)
        self.counters["dram_evictions"] += 1
        self.metrics.evictions.labels("dram").inc()
        log.info("dram tier: evicted %s", key)

    def _load_dram(self, manifest: ModelVersion, on_meta: Callable[[AcquireMeta], None] | None = None) -> LoadTier:
        """Make ``manifest`` resident in DRAM (through SSD); returns the tier it came from."""
        key = manifest.key
        self.metrics.misses.labels("dram").inc()
        started = time.perf_counter()
        reserved: tuple[int, int] | None = None
        try:
            for attempt in range(2):
                ssd_entry, tier = self._ensure_ssd(manifest)
                if tier is LoadTier.SSD:
                    self.metrics.hits.labels("ssd").inc()
                self.ssd.pin(key)
                try:
                    index = read_index(ssd_entry.path)
                    nbytes = checkpoint_nbytes(index)
                    if reserved is None or reserved[1] < nbytes:
                        if reserved is not None:
                            with self._lock:
                                self.free = release(self.free, *reserved)
                            reserved = None
                        reserved = self._reserve_dram(key, nbytes)
                    meta_dir = self._write_meta(manifest, ssd_entry.path, index)
                    if on_meta is not None:  # the client builds the skeleton while we read
                        with contextlib.suppress(Exception):
                            on_meta(AcquireMeta(model=manifest.name, version=manifest.version,
                                                meta_dir=str(meta_dir)))
                        on_meta = None
                    read_started = time.perf_counter()
                    stats = read_into(ssd_entry.path, index, self.pool.region(reserved[0], nbytes), verify=True,
                                      chunk_bytes=self.settings.loader_chunk_bytes,
                                      threads=self.settings.loader_threads, direct_io=self.settings.loader_direct_io)
                    read_s = time.perf_counter() - read_started
                    break
                except CheckpointError as exc:
                    log.warning("ssd tier: %s is corrupt (%s); deleting it and fetching it again", key, exc)
                    with self._lock:
                        self.counters["corrupt_refetches"] += 1
                    self.metrics.corrupt.inc()
                    self.ssd.remove(key)
                    if attempt == 1:
                        raise
                    continue
                finally:
                    self.ssd.unpin(key)
        except BaseException:
            if reserved is not None:
                with self._lock:
                    self.free = release(self.free, *reserved)
            raise
        assert reserved is not None
        with self._lock:
            self.dram[key] = DramEntry(manifest, reserved[0], reserved[1], nbytes, index.dumps(), meta_dir, time.time())
            self.counters["dram_loads"] += 1
            if read_s > 0:  # O_DIRECT: the disk's figure even right after a fetch
                self.bandwidth["ssd"] = ema(self.bandwidth["ssd"], nbytes / read_s)
        total_s = time.perf_counter() - started
        self.metrics.bytes_loaded.labels("dram").inc(nbytes)
        self.metrics.load_seconds.labels("dram").observe(total_s)
        log.info("dram tier: loaded %s from %s: %d bytes, read %.3f s (%.2f GB/s, O_DIRECT %s), %.3f s in all",
                 key, tier.value, nbytes, read_s, nbytes / read_s / 1e9 if read_s > 0 else 0.0, stats.direct_io,
                 total_s)
        return tier

    def _write_meta(self, manifest: ModelVersion, src: Path, index: CheckpointIndex) -> Path:
        """Copy the small files (index, config, tokenizer) next to the DRAM entry, so a client can
        build the model even after the SSD copy is evicted."""
        meta_dir = ssd_entry_dir(self.meta_root, manifest.name, manifest.version)
        shutil.rmtree(meta_dir, ignore_errors=True)
        meta_dir.mkdir(parents=True)
        for name in (INDEX_FILE, *index.files):
            target = meta_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, target)
        return meta_dir

    def _sweep_loop(self) -> None:
        interval = min(0.5, self.settings.lease_ttl_s / 4)
        while not self._stop.wait(interval):
            self.expire_leases()

    def expire_leases(self) -> list[str]:
        with self._lock:
            gone = expired_leases({k: v.deadline for k, v in self.leases.items()}, time.monotonic())
            for lease_id in gone:
                lease = self.leases.pop(lease_id)
                entry = self.dram.get(lease.key)
                if entry is not None:
                    entry.leases.discard(lease_id)
                self.counters["leases_expired"] += 1
                log.info("lease %s on %s (pid %d) expired", lease_id, lease.key, lease.pid)
        if gone:
            self._changed()
        return gone
