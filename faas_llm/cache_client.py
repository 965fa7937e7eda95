"""The client side of the node's cache agent: leases on checkpoints held in its DRAM pool,
mapped into this process without copying.

::

    client = CacheClient(settings)
    loaded = client.load_model("org/model")      # acquire + map + build; heartbeats the lease
    loaded.model(...)                            # weights are views into the shared segment
    loaded.close()                               # release (or client.close() for all)

``acquire`` returns a :class:`CacheLease` (segment path, offset, index); ``lease.tensors()``
maps the checkpoint's extent of the segment (``MAP_SHARED``, read-only) and views every tensor
in it. On a pool of 2 MiB pages (the agent reports its page size) the mapping is populated at once
(``MAP_POPULATE``: ~1,300 entries for 2.6 GB, a few ms). On 4 KiB pages (~640,000 entries)
:meth:`CacheClient.load_model` populates it too, but on two threads (``MADV_POPULATE_READ`` per
64 MiB chunk, tensors in the forward's order) started as soon as the acquire reply arrives, while
the skeleton builds and the tokenizer loads, and waits for them before it returns the model. A
prewarmed runtime does better: :func:`premap_pool` maps the agent's whole pool segment and populates
it before any /init (the pool is pre-faulted and never shrinks, so its pages stay the same), and a
lease is then a view of that mapping, with no page-table work on the request path at all
(``bench/RESULTS.md``, issue 11). A background
thread heartbeats every live lease at a third of its TTL while the client holds one: it ends
when the last lease is released, when the client closes, or when the client is dropped (the
thread holds it weakly). When the agent is down,
:meth:`CacheClient.load_model` (``fallback=True``) loads the newest copy in the node's SSD
tier with the checkpoint loader itself, else raises :class:`CacheAgentError`.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from faas_llm.cache_protocol import (
    AcquireMeta,
    AcquireReply,
    AcquireRequest,
    ErrorReply,
    EvictReply,
    EvictRequest,
    HeartbeatReply,
    HeartbeatRequest,
    MetricsReply,
    MetricsRequest,
    OkReply,
    PrefetchReply,
    PrefetchRequest,
    ReleaseRequest,
    StatusReply,
    StatusRequest,
    local_versions,
    raise_error_reply,
    ssd_entry_dir,
)
from faas_llm.errors import CacheAgentError, CheckpointError, NoCapacityError, RequestError
from faas_llm.settings import Settings
from faas_llm.types import LoadTier, check_model_name

log = logging.getLogger(__name__)
HUGE_PAGE = 2 * 1024 * 1024
#: settings.runtime_premap_pool_max_bytes' default: a premapped pool costs 2 MiB of page tables per GiB (4 KiB
#: pages) per process
PREMAP_MAX_BYTES: int = Settings.model_fields["runtime_premap_pool_max_bytes"].default


@dataclass
class PoolMapping:
    """The whole DRAM pool segment, mapped read-only and populated in this process ahead of any lease
    (:func:`premap_pool`): a lease on a checkpoint in it is a view of this mapping, so neither /init nor the
    first forward builds page-table entries. ``dev``/``ino`` tell it from a later agent's segment."""

    path: str
    dev: int
    ino: int
    size: int
    mapping: mmap.mmap
    populate_s: float

    def view(self, segment: str, offset: int, nbytes: int) -> memoryview | None:
        """``nbytes`` at ``offset`` of ``segment`` if that is still this mapping's file, else None."""
        try:
            st = os.stat(segment)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) or offset < 0 or offset + nbytes > self.size:
            return None
        return memoryview(self.mapping)[offset:offset + nbytes]


_pool_mappings: dict[str, PoolMapping] = {}
_pool_lock = threading.Lock()
_premap_stop = threading.Event()  # set: an in-flight premap gives up (a lease needs the cores now)


def premap_policy(page_bytes: int, capacity: int, max_bytes: int = PREMAP_MAX_BYTES) -> bool:
    """Whether a prewarmed runtime maps and populates the whole pool before /init: on 4 KiB pages (on 2 MiB
    pages a lease's MAP_POPULATE is a few ms anyway) and only up to ``max_bytes`` (page tables, time)."""
    return 0 < page_bytes < HUGE_PAGE and 0 < capacity <= max_bytes


def map_pool(segment: str, *, threads: int = 2, stop: threading.Event | None = None) -> PoolMapping | None:
    """Map segment ``segment`` whole (read-only, shared: no copy) and populate it on ``threads`` threads;
    later leases on it in this process view this mapping (:func:`premapped`). None (nothing kept) when
    ``stop`` was set before it finished."""
    from faas_llm.checkpoint.region import populate

    fd = os.open(segment, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        mapping = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    started = time.perf_counter()
    view = memoryview(mapping)
    try:
        populate(view, threads=threads, stop=stop)
    finally:
        view.release()
    if stop is not None and stop.is_set():
        mapping.close()
        return None
    pool = PoolMapping(segment, st.st_dev, st.st_ino, st.st_size, mapping, time.perf_counter() - started)
    with _pool_lock:
        _pool_mappings[segment] = pool
    return pool


def premapped(segment: str, offset: int, nbytes: int) -> memoryview | None:
    """A view of a pool this process mapped with :func:`map_pool`, if ``segment`` is still that file."""
    with _pool_lock:
        pool = _pool_mappings.get(segment)
    return pool.view(segment, offset, nbytes) if pool is not None else None


def start_premap(settings: Settings, *, threads: int | None = None) -> threading.Thread:
    """:func:`premap_pool` on a background thread (a runtime is ready without waiting for it); a lease
    taken before it finished stops it and maps its own extent instead."""
    _premap_stop.clear()
    thread = threading.Thread(target=premap_pool, args=(settings,), kwargs={"threads": threads},
                              name="cache-premap-pool", daemon=True)
    thread.start()
    return thread


def premap_pool(settings: Settings, *, threads: int | None = None) -> PoolMapping | None:
    """In a prewarmed runtime, before /init: ask the node's cache agent where its DRAM pool is and, where
    :func:`premap_policy` says so, map and populate it whole (~0.2-1 s per 2.6 GB of 4 KiB pages on
    the dev VM, off the request path). None when there is no agent, nothing to do, or a lease came first."""
    try:
        status = CacheClient(settings, heartbeat=False, timeout_s=5).status()
    except CacheAgentError:
        return None
    if not premap_policy(status.dram_page_bytes, status.dram_capacity, settings.runtime_premap_pool_max_bytes):
        return None
    threads = settings.runtime_populate_threads if threads is None else threads
    try:
        pool = map_pool(status.segment, threads=max(1, threads), stop=_premap_stop)
    except OSError as exc:
        log.warning("could not premap the DRAM pool %s: %s", status.segment, exc)
        return None
    if pool is not None:
        log.info("premapped the DRAM pool %s (%d bytes) in %.3f s", pool.path, pool.size, pool.populate_s)
    return pool


@dataclass
class CacheLease:
    """A lease on a checkpoint in the agent's DRAM pool (valid while heartbeated)."""

    reply: AcquireReply
    client: CacheClient
    acquired_at: float = field(default_factory=time.monotonic)
    expired: bool = False
    _mapping: mmap.mmap | None = None
    _premapped: memoryview | None = None
    _index: Any = None
    _skew: int = 0

    @property
    def lease_id(self) -> str:
        return self.reply.lease_id

    @property
    def tier(self) -> LoadTier:
        return self.reply.tier

    @property
    def index(self) -> Any:
        """The checkpoint's :class:`~faas_llm.checkpoint.CheckpointIndex`."""
        if self._index is None:
            from faas_llm.checkpoint import loads_index

            self._index = loads_index(self.reply.index, f"{self.reply.model}@{self.reply.version} (cache agent)")
        return self._index

    def buffer(self, *, populate: bool | None = None) -> memoryview:
        """The checkpoint's region: a read-only view of the agent's segment (no copy). ``populate``
        (default: when the pool is on 2 MiB pages) builds the page tables now (MAP_POPULATE): a few
        hundred entries for 2.6 GB on huge pages (~2 ms), so the first forward pays no faults; on
        4 KiB pages it is ~640,000 entries (~0.2 s on one thread on a quiet VM), which
        :meth:`start_populate` builds on background threads instead (the mapping is created once:
        ``populate`` only counts on the first call)."""
        if populate is None:
            populate = self.reply.page_bytes >= HUGE_PAGE
        if self._mapping is None and self._premapped is None:
            self._premapped = premapped(self.reply.segment, self.reply.offset, self.reply.nbytes)
            if self._premapped is None:
                _premap_stop.set()  # a premap still running would only compete with this lease's own
        if self._premapped is not None:
            return self._premapped
        if self._mapping is None:
            start = self.reply.offset // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
            skew = self.reply.offset - start
            try:
                fd = os.open(self.reply.segment, os.O_RDONLY)
            except OSError as exc:
                raise CacheAgentError(f"cannot open the cache agent's segment {self.reply.segment}: {exc}") from exc
            try:
                flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
                self._mapping = mmap.mmap(fd, skew + self.reply.nbytes, flags=flags, prot=mmap.PROT_READ,
                                          offset=start)
            finally:
                os.close(fd)
            self._skew = skew
        return memoryview(self._mapping)[self._skew:self._skew + self.reply.nbytes]

    def start_populate(self, threads: int = 2) -> Populating | None:
        """Map the region (lazily) and start building its page-table entries on ``threads`` background
        threads (``MADV_POPULATE_READ``, tensors in the forward's order); ``wait()`` on the result
        before the first forward. None where :func:`populate_policy` says there is nothing to do."""
        how = populate_policy(self.reply.page_bytes, threads)
        if how != "threads":
            return None
        from faas_llm.checkpoint.region import forward_order_extents, populate_plan

        buffer = self.buffer(populate=False)
        if self._premapped is not None:  # a view of the pool this process populated before /init
            return None
        return Populating(buffer, populate_plan(buffer.nbytes, forward_order_extents(self.index)), threads)

    def tensors(self, *, populate: bool | None = None) -> dict[str, Any]:
        """Zero-copy tensors (read-only memory: inference only) for every name of the index."""
        from faas_llm.checkpoint import tensors_from_buffer

        return tensors_from_buffer(self.index, self.buffer(populate=populate))

    def model(self, *, populate: bool | None = None, skeleton: Any = None) -> Any:
        """A ready ``nn.Module`` whose weights are views into the shared segment (``skeleton``: one
        :func:`~faas_llm.checkpoint.build_skeleton` built already from this lease's ``meta_dir``)."""
        from faas_llm.checkpoint import build_model

        return build_model(self.reply.meta_dir, self.tensors(populate=populate), skeleton=skeleton)

    def release(self) -> None:
        """Give the lease back (the mapping stays valid until unused; do not use it after this)."""
        self.client.release(self)


def populate_policy(page_bytes: int, threads: int) -> Literal["map", "threads", "lazy"]:
    """How a runtime maps a lease's pages before its first forward: ``map`` (``MAP_POPULATE`` at mmap:
    a pool of 2 MiB pages needs a few hundred entries), ``threads`` (4 KiB pages: populated on
    ``threads`` background threads, overlapped with the build), ``lazy`` (``threads`` 0: faulted in by
    the first forward)."""
    if page_bytes >= HUGE_PAGE:
        return "map"
    return "threads" if threads > 0 else "lazy"


class Populating:
    """Page-table entries of a mapped region being built on background threads (see
    :func:`~faas_llm.checkpoint.region.populate`); a failure only logs (the forward faults instead)."""

    def __init__(self, buffer: memoryview, plan: list[tuple[int, int]], threads: int) -> None:
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(buffer, plan, threads), name="cache-populate",
                                        daemon=True)
        self._thread.start()

    def _run(self, buffer: memoryview, plan: list[tuple[int, int]], threads: int) -> None:
        from faas_llm.checkpoint.region import populate

        started = time.perf_counter()
        try:
            populate(buffer, plan, threads=threads, stop=self._stop)
        except OSError as exc:
            log.warning("populating the mapped checkpoint failed (%s): the first forward maps it instead", exc)
        finally:
            del buffer
        self.seconds = time.perf_counter() - started

    def wait(self) -> float | None:
        """Wait until populated; the seconds it took (from start), or None if it did not finish."""
        self._thread.join()
        return self.seconds

    def cancel(self) -> None:
        """Skip the chunks not started yet and wait for the threads (before unmapping on an error)."""
        self._stop.set()
        self._thread.join()


@dataclass
class LoadedModel:
    """A model and where it came from; ``close()`` releases its lease (if any)."""

    model: Any
    tier: LoadTier
    seconds: float
    lease: CacheLease | None = None
    path: Path | None = None

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None


class CacheClient:
    """Talks to the node's cache agent over its unix socket (a connection per call)."""

    def __init__(self, settings: Settings, socket_path: Path | None = None, *, timeout_s: float = 600.0,
                 heartbeat: bool = True, populate_threads: int | None = None) -> None:
        self.settings = settings
        # load_model on a 4 KiB-page pool: see populate_policy (default: settings.runtime_populate_threads)
        self.populate_threads = settings.runtime_populate_threads if populate_threads is None else populate_threads
        self.socket_path = socket_path or settings.cache_socket_path
        self.timeout_s = timeout_s
        self._leases: dict[str, CacheLease] = {}
        self._lock = threading.Lock()
        self._heartbeat = heartbeat
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # the running heartbeat thread's own stop signal (a new one per thread)
        self._stop_box = [self._stop]  # reachable without the client: a client dropped unclosed stops its thread
        weakref.finalize(self, _set_first, self._stop_box)

    # --- transport ---------------------------------------------------------------------------
    def _call(self, request: BaseModel, reply_type: type[Any], timeout_s: float | None = None,
              on_meta: Callable[[AcquireMeta], None] | None = None) -> Any:
        line = request.model_dump_json().encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s or self.timeout_s)
                sock.connect(str(self.socket_path))
                sock.sendall(line)
                with sock.makefile("rb") as reader:
                    raw = reader.readline()
                    if on_meta is not None and raw.startswith(b'{"stage":"meta"'):
                        try:
                            on_meta(AcquireMeta.model_validate_json(raw))
                        finally:
                            raw = reader.readline()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CacheAgentError(f"no cache agent listening on {self.socket_path} ({exc.strerror})") from None
        except OSError as exc:
            raise CacheAgentError(f"cache agent on {self.socket_path} failed: {exc}") from None
        if not raw:
            raise CacheAgentError(f"cache agent on {self.socket_path} closed the connection without a reply")
        try:
            reply = ErrorReply.model_validate_json(raw)
        except ValidationError:
            pass
        else:
            raise_error_reply(reply)
        try:
            return reply_type.model_validate_json(raw)
        except ValidationError as exc:
            raise CacheAgentError(f"unexpected reply from the cache agent: {exc}") from None

    def available(self) -> bool:
        """Whether an agent answers on the socket."""
        try:
            self.status()
        except CacheAgentError:
            return False
        return True

    # --- requests ----------------------------------------------------------------------------
    def acquire(self, model: str, version: int | None = None, *, ttl_s: float | None = None,
                on_meta: Callable[[AcquireMeta], None] | None = None) -> CacheLease:
        """Lease ``model``; when the agent has to load it first, ``on_meta`` is called (on this thread)
        as soon as its config and tokenizer files are in place, before the weights are read."""
        try:
            request = AcquireRequest(model=model, version=version, ttl_s=ttl_s, early_meta=on_meta is not None)
        except ValidationError as exc:
            raise RequestError(f"invalid acquire of {model!r}: {exc.errors()[0]['msg']}") from None
        lease = CacheLease(self._call(request, AcquireReply, on_meta=on_meta), self)
        with self._lock:
            self._leases[lease.lease_id] = lease
        self._ensure_heartbeat()
        return lease

    def release(self, lease: CacheLease | str) -> None:
        lease_id = lease if isinstance(lease, str) else lease.lease_id
        with self._lock:
            self._leases.pop(lease_id, None)
            if not self._leases:
                self._end_heartbeat()
        self._call(ReleaseRequest(lease_id=lease_id), OkReply)

    def heartbeat(self) -> list[str]:
        """Extend every held lease now; returns the ids the agent had already expired."""
        with self._lock:
            ids = list(self._leases)
        if not ids:
            return []
        reply: HeartbeatReply = self._call(HeartbeatRequest(lease_ids=ids), HeartbeatReply, timeout_s=10)
        with self._lock:
            for lease_id in reply.expired:
                lease = self._leases.pop(lease_id, None)
                if lease is not None:
                    lease.expired = True
                    log.warning("cache lease %s on %s@%s expired", lease_id, lease.reply.model, lease.reply.version)
            if not self._leases:
                self._end_heartbeat()
        return reply.expired

    def prefetch(self, model: str, tier: Literal["dram", "ssd"] = "dram", version: int | None = None, *,
                 wait: bool = False) -> PrefetchReply:
        try:
            request = PrefetchRequest(model=model, version=version, tier=tier, wait=wait)
        except ValidationError as exc:
            raise RequestError(f"invalid prefetch of {model!r}: {exc.errors()[0]['msg']}") from None
        reply: PrefetchReply = self._call(request, PrefetchReply)
        return reply

    def evict(self, model: str, tier: Literal["dram", "ssd"] = "dram", version: int | None = None) -> list[str]:
        """Drop ``model`` from a tier of the agent now (ConflictError while it is leased); the evicted keys."""
        try:
            request = EvictRequest(model=model, version=version, tier=tier)
        except ValidationError as exc:
            raise RequestError(f"invalid evict of {model!r}: {exc.errors()[0]['msg']}") from None
        reply: EvictReply = self._call(request, EvictReply)
        return reply.evicted

    def status(self) -> StatusReply:
        reply: StatusReply = self._call(StatusRequest(), StatusReply, timeout_s=30)
        return reply

    def metrics(self) -> str:
        reply: MetricsReply = self._call(MetricsRequest(), MetricsReply, timeout_s=30)
        return reply.text

    # --- models ------------------------------------------------------------------------------
    def load_model(self, model: str, version: int | None = None, *, fallback: bool = True,
                   on_meta: Callable[[Path], None] | None = None) -> LoadedModel:
        """Acquire ``model`` and build it from the shared segment; if the agent is down, or its DRAM
        tier is full of checkpoints in use (NoCapacityError: the refused acquire has still put the
        checkpoint on the node's SSD), and ``fallback``, load the newest local SSD copy with the
        loader into this process's own memory (CacheAgentError / NoCapacityError if there is none).

        When the agent has to load the checkpoint (SSD or registry), the skeleton is built while
        it reads (as the checkpoint loader does), and ``on_meta(meta_dir)`` runs on that thread
        too (e.g. to load the tokenizer); on a DRAM hit both happen after the (immediate) reply, while
        the mapping is populated on background threads (4 KiB-page pool: :func:`populate_policy`)."""
        started = time.perf_counter()
        early = EarlyBuild(on_meta)
        try:
            lease = self.acquire(model, version, on_meta=early.start)
        except (CacheAgentError, NoCapacityError) as exc:
            early.join()
            if not fallback:
                raise
            return self._load_local(model, version, started, exc)
        populating: Populating | None = None
        try:
            populating = lease.start_populate(self.populate_threads)
            skeleton = early.skeleton_for(lease.reply.meta_dir)
            if skeleton is None and on_meta is not None:
                on_meta(Path(lease.reply.meta_dir))
            built = lease.model(skeleton=skeleton)
            if populating is not None:
                populated_s = populating.wait()
                log.debug("populated %s's mapping in %s s", model, populated_s)
        except BaseException:
            if populating is not None:
                populating.cancel()
            with contextlib.suppress(CacheAgentError):
                lease.release()
            raise
        return LoadedModel(built, lease.tier, time.perf_counter() - started, lease=lease)

    def _load_local(self, model: str, version: int | None, started: float,
                    cause: CacheAgentError | NoCapacityError) -> LoadedModel:
        from faas_llm.checkpoint import load_model

        check_model_name(model)
        root = self.settings.ssd_path
        versions = [v for v in local_versions(root, model) if version is None or v == version]
        if not versions:
            raise type(cause)(f"{cause.message}; and no local copy of {model} in {root} to fall back to")
        path = ssd_entry_dir(root, model, versions[-1])
        try:
            built, _ = load_model(path, settings=self.settings)
        except CheckpointError as exc:
            raise CacheAgentError(f"{cause.message}; the local copy {path} failed to load: {exc.message}") from exc
        log.warning("cache agent could not serve %s (%s): loaded it from %s into this process", model, cause.message,
                    path)
        return LoadedModel(built, LoadTier.LOCAL, time.perf_counter() - started, path=path)

    # --- heartbeats ----------------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        if not self._heartbeat:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._stop = self._stop_box[0] = threading.Event()
            self._thread = threading.Thread(target=_heartbeat_loop, args=(weakref.ref(self), self._stop),
                                            name="cache-lease-heartbeat", daemon=True)
            self._thread.start()

    def _next_heartbeat_s(self) -> float | None:
        """Seconds to the next heartbeat for the calling heartbeat thread, or None when it is to end:
        no lease is held (the thread is forgotten, the next acquire starts one) or it was replaced."""
        with self._lock:
            if self._thread is not threading.current_thread():
                return None
            if not self._leases:
                self._end_heartbeat()
                return None
            return min(lease.reply.ttl_s for lease in self._leases.values()) / 3

    def _end_heartbeat(self) -> None:
        """Stop the heartbeat thread (if any) and forget it; call with ``_lock`` held."""
        self._stop.set()
        self._thread = None

    def close(self) -> None:
        """Stop heartbeating and release every lease still held (best effort)."""
        with self._lock:
            thread = self._thread
            self._end_heartbeat()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            ids = list(self._leases)
        for lease_id in ids:
            with contextlib.suppress(CacheAgentError):
                self.release(lease_id)

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EarlyBuild:
    """Builds the skeleton (and runs ``on_meta``) on a thread while the agent reads the weights."""

    def __init__(self, on_meta: Callable[[Path], None] | None) -> None:
        self.on_meta = on_meta
        self.meta_dir: str | None = None
        self.skeleton: Any = None
        self.failed: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self, meta: AcquireMeta) -> None:
        self.meta_dir = meta.meta_dir
        self.thread = threading.Thread(target=self._run, name="cache-early-build", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from faas_llm.checkpoint import build_skeleton

        assert self.meta_dir is not None
        try:
            self.skeleton = build_skeleton(self.meta_dir)
            if self.on_meta is not None:
                self.on_meta(Path(self.meta_dir))
        except BaseException as exc:  # built again (and failing loudly there) after the reply
            self.failed = exc

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def skeleton_for(self, meta_dir: str) -> Any:
        """The skeleton built early, if it was built from ``meta_dir`` without a problem; else None."""
        self.join()
        if self.thread is None or self.failed is not None or self.meta_dir != meta_dir:
            if self.failed is not None:
                log.info("early skeleton build failed (%s): building it after the reply", self.failed)
            return None
        return self.skeleton


def _set_first(box: list[threading.Event]) -> None:
    box[0].set()


def _heartbeat_loop(ref: weakref.ref[CacheClient], stop: threading.Event) -> None:
    """Heartbeat the leases of the client ``ref`` names until it holds none, closes, or is gone."""
    while True:
        client = ref()
        if client is None:
            return
        wait_s = client._next_heartbeat_s()
        del client  # hold the client only while working, so dropping it ends this thread
        if wait_s is None or stop.wait(wait_s):
            return
        client = ref()
        if client is None:
            return
        try:
            client.heartbeat()
        except CacheAgentError as exc:
            log.warning("cache lease heartbeat failed: %s", exc)
        del client
