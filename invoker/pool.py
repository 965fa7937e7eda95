"""A node's container pool: applies :mod:`faas_llm.pool_policy` decisions with a container factory.

Starting, initialising and removing runtimes take seconds, so they run on the pool's executor
(long-lived threads: a process runtime dies with the thread that started it, see
:mod:`invoker.factory`). The pool calls ``on_ready(container)`` when a container has been
initialised with its action (the dispatcher then starts pulling for it) and
``on_init_failed(action, error)`` when ``/init`` failed.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from faas_llm.errors import FaasLLMError, InitError
from faas_llm.pool_policy import Outcome, PoolCapacity, choose, keep_alive_removals, prewarm_deficit
from faas_llm.runtime_protocol import init_body
from faas_llm.settings import Settings
from faas_llm.types import Action, ContainerInfo, ContainerState, now_ms
from invoker import runtime_client
from invoker.container import Container
from invoker.factory import ContainerFactory, gpu_ids
from invoker.metrics import InvokerMetrics

log = logging.getLogger(__name__)
S = ContainerState
#: memory a prewarmed runtime (torch imported, no model) is counted for
PREWARM_MEMORY_MB = 256
#: runtime boot seconds assumed before one was measured here
DEFAULT_BOOT_S = 5.0


class ContainerPool:
    def __init__(
        self,
        settings: Settings,
        factory: ContainerFactory,
        metrics: InvokerMetrics,
        on_ready: Callable[[Container], None],
        on_init_failed: Callable[[Action, FaasLLMError], None],
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.metrics = metrics
        self.on_ready = on_ready
        self.on_init_failed = on_init_failed
        # a GPU node runs one runtime per GPU (invoker.factory.GpuSlots)
        gpus = len(gpu_ids(settings.node_gpus)) or settings.max_containers
        self.capacity = PoolCapacity(min(settings.max_containers, gpus), settings.node_memory_mb)
        self.lock = threading.RLock()
        self.containers: dict[str, Container] = {}
        self.executor = ThreadPoolExecutor(max_workers=settings.max_containers + 2, thread_name_prefix="pool")
        self.closed = False
        #: seconds a runtime takes to boot here (an average of what was measured)
        self.boot_s = DEFAULT_BOOT_S
        self._boots = 0

    def _start_runtime(self, container: Container) -> None:
        started = time.monotonic()
        container.handle = self.factory.start(container.id)
        seconds = time.monotonic() - started
        with self.lock:
            self._boots += 1
            self.boot_s = seconds if self._boots == 1 else 0.7 * self.boot_s + 0.3 * seconds

    # --- reading ------------------------------------------------------------------------
    def snapshot(self) -> list[ContainerInfo]:
        mono, epoch = time.monotonic(), now_ms()
        with self.lock:
            return [c.info(mono, epoch) for c in self.containers.values()]

    def free_memory_mb(self) -> int:
        with self.lock:
            used = sum(c.memory_mb for c in self.containers.values() if c.state is not S.REMOVING)
        return max(0, self.capacity.memory_mb - used)

    def of_action(self, namespace: str, action: str) -> list[Container]:
        with self.lock:
            return [c for c in self.containers.values() if c.serves(namespace, action) and c.state is not S.REMOVING]

    # --- starting -----------------------------------------------------------------------
    def ensure_prewarm(self) -> int:
        """Start prewarm runtimes up to ``settings.prewarm_count``; returns how many were started."""
        with self.lock:
            if self.closed:
                return 0
            views = [c.view() for c in self.containers.values()]
            n = prewarm_deficit(views, self.settings.prewarm_count, self.capacity, PREWARM_MEMORY_MB)
            for _ in range(n):
                container = Container(self._new_id(), PREWARM_MEMORY_MB)
                self.containers[container.id] = container
                self.executor.submit(self._boot_prewarm, container)
        return n

    def place(self, action: Action) -> Outcome:
        """Make (or find) an instance of ``action`` on this node, as the pool policy says."""
        with self.lock:
            if self.closed:
                return Outcome.NO_CAPACITY
            views = [c.view() for c in self.containers.values()]
            choice = choose(views, action.namespace, action.name, action.limits.memory, self.capacity,
                            concurrency=action.limits.concurrency, min_instances=self._min_instances(action))
            if choice.outcome is Outcome.PREWARMED:
                assert choice.container is not None
                container = self.containers[choice.container]
                container.bind(action, action.limits.memory)
                self.executor.submit(self._init, container, action, "prewarm")
            elif choice.outcome in (Outcome.COLD, Outcome.EVICT):
                for victim in choice.evict:
                    # graceful: the victim is idle, so its drain is immediate, and a runtime stopped by
                    # SIGTERM gives its cache-agent lease back (SIGKILL left the checkpoint pinned in
                    # DRAM for the lease TTL: sim_validate's finding)
                    self.remove(victim, graceful=True)
                container = Container(self._new_id(), action.limits.memory, action)
                self.containers[container.id] = container
                self.executor.submit(self._start_and_init, container, action)
        log.info("place %s/%s on %s: %s", action.namespace, action.name, self.settings.node_id, choice.outcome.value)
        return choice.outcome

    def _min_instances(self, placing: Action) -> dict[tuple[str, str], int]:
        """``min_instances`` per action with a container here (as bound; ``placing`` as given now): the pool
        never evicts a container that keeps its action at its minimum."""
        out = {(c.action.namespace, c.action.name): c.action.scaling.min_instances
               for c in self.containers.values() if c.action is not None}
        out[(placing.namespace, placing.name)] = placing.scaling.min_instances
        return out

    def _new_id(self) -> str:
        return f"{self.settings.node_id}-{secrets.token_hex(4)}"

    def _boot_prewarm(self, container: Container) -> None:
        try:
            self._start_runtime(container)
        except FaasLLMError as exc:
            (log.info if self.closed else log.error)("prewarm runtime %s failed to start: %s", container.id,
                                                     exc.message)
            self._forget(container)
            return
        with container.lock:
            if container.state is S.STARTING and container.action is None:
                container.state = S.PREWARMED
            removing = container.state is S.REMOVING
        if removing:
            self._destroy(container, graceful=False)

    def _start_and_init(self, container: Container, action: Action) -> None:
        try:
            self._start_runtime(container)
        except FaasLLMError as exc:
            log.error("runtime %s failed to start: %s", container.id, exc.message)
            self._forget(container)
            self.on_init_failed(action, exc)
            return
        self._init(container, action, "cold")

    def _init(self, container: Container, action: Action, kind: str) -> None:
        if container.handle is None:  # a prewarm still booting was bound: wait for its runtime
            deadline = time.monotonic() + self.settings.runtime_start_timeout_s
            while container.handle is None and time.monotonic() < deadline and container in self._live():
                time.sleep(0.05)
        if container.handle is None or container.state is S.REMOVING:
            self._forget(container)
            return
        body = init_body(name=action.name, main=action.exec.main, code=action.exec.code, binary=action.exec.binary,
                         model=action.exec.model)
        started = time.monotonic()
        try:
            info = runtime_client.init(container.handle.url, body, self.settings.runtime_start_timeout_s)
        except (FaasLLMError, runtime_client.RuntimeGone) as exc:
            error = exc if isinstance(exc, FaasLLMError) else InitError(f"The action failed to initialize: {exc}")
            log.error("init of %s/%s in %s failed: %s", action.namespace, action.name, container.id, error.message)
            self.remove(container.id, graceful=False)
            self.on_init_failed(action, error)
            return
        container.init_info = info
        container.init_ms = int((time.monotonic() - started) * 1000)
        with container.lock:
            if container.state is S.REMOVING:
                return
            container.state = S.IDLE
            container.last_used = time.monotonic()
        self.metrics.starts.labels(kind=kind, tier=info.load_tier.value).inc()
        log.info("container %s ready for %s/%s (%s, load %.2fs from %s)", container.id, action.namespace,
                 action.name, kind, info.load_s, info.load_tier.value)
        self.on_ready(container)
        self.ensure_prewarm()

    # --- removing -----------------------------------------------------------------------
    def keep_alive_removals(self, candidates: list[str], now: float) -> list[str]:
        """Of the idle containers past their keep-alive, those to remove now (``settings.keep_idle_until_needed``
        keeps them while their slot is not wanted: :func:`faas_llm.pool_policy.keep_alive_removals`)."""
        with self.lock:
            views = [c.view() for c in self.containers.values()]
        return keep_alive_removals(views, candidates, now, until_needed=self.settings.keep_idle_until_needed,
                                   max_idle_s=self.settings.max_idle_s)

    def _live(self) -> list[Container]:
        with self.lock:
            return list(self.containers.values())

    def remove(self, container_id: str, graceful: bool = True, only_if_idle: bool = False) -> bool:
        with self.lock:
            container = self.containers.get(container_id)
            if container is None or not container.mark_removing(only_if_idle=only_if_idle):
                return False
        if container.handle is not None:
            self.executor.submit(self._destroy, container, graceful)
        return True

    def _destroy(self, container: Container, graceful: bool) -> None:
        try:
            if container.handle is not None:
                self.factory.remove(container.handle, graceful=graceful)
        finally:
            self._forget(container)

    def _forget(self, container: Container) -> None:
        with self.lock:
            self.containers.pop(container.id, None)

    def replace(self, container: Container) -> None:
        """A broken container goes; a new one for the same action starts in its place."""
        action = container.action
        self.remove(container.id, graceful=False)
        if action is not None and not self.closed:
            self.place(action)

    def close(self) -> None:
        """Remove every container (waiting for them to stop) and stop the executor."""
        with self.lock:
            self.closed = True
            containers = list(self.containers.values())
        for c in containers:
            c.mark_removing()
        for c in containers:
            if c.handle is not None:
                self.factory.remove(c.handle, graceful=False)
        self.factory.close()  # runtimes still booting die now instead of holding up the shutdown
        self.executor.shutdown(wait=True, cancel_futures=True)
        for c in containers:  # a start that finished during shutdown
            if c.handle is not None and self.factory.alive(c.handle):
                self.factory.remove(c.handle, graceful=False)
        with self.lock:
            self.containers.clear()
