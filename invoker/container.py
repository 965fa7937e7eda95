"""One container of a node's pool: its runtime handle, state (checked transitions) and load."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from faas_llm.pool_policy import ContainerView, check_transition, state_for
from faas_llm.runtime_protocol import InitReply
from faas_llm.types import Action, ContainerInfo, ContainerState, LoadTier
from invoker.factory import RuntimeHandle

S = ContainerState


@dataclass(frozen=True)
class ColdFacts:
    """What the first run of a container reports about its start."""

    load_tier: LoadTier
    load_s: float
    init_ms: int


class Container:
    """A runtime in the pool. Mutations go through the lock; states follow ``pool_policy.TRANSITIONS``."""

    def __init__(self, container_id: str, memory_mb: int, action: Action | None = None) -> None:
        self.id = container_id
        self.lock = threading.Lock()
        self._freed = threading.Condition(self.lock)  # a run slot freed (or the container is going)
        self.state = S.STARTING
        self.handle: RuntimeHandle | None = None
        self.action: Action | None = action
        self.memory_mb = memory_mb
        self.active = 0
        self.last_used = time.monotonic()
        self.init_info: InitReply | None = None
        self.init_ms: int | None = None
        self._cold_pending = True
        self.prewarmed = action is None

    # --- identity ---------------------------------------------------------------------
    @property
    def namespace(self) -> str | None:
        return self.action.namespace if self.action else None

    @property
    def action_name(self) -> str | None:
        return self.action.name if self.action else None

    @property
    def concurrency(self) -> int:
        return self.action.limits.concurrency if self.action else 1

    def serves(self, namespace: str, action: str) -> bool:
        return self.namespace == namespace and self.action_name == action

    # --- state --------------------------------------------------------------------------
    def move(self, new: ContainerState) -> None:
        with self.lock:
            self.state = check_transition(self.state, new)

    def bind(self, action: Action, memory_mb: int) -> None:
        """A prewarmed runtime takes an action (PREWARMED -> STARTING)."""
        with self.lock:
            self.state = check_transition(self.state, S.STARTING)
            self.action = action
            self.memory_mb = memory_mb

    def acquire(self) -> bool:
        """Take one run slot; False when the container is not warm or is full."""
        with self.lock:
            if self.state not in (S.IDLE, S.BUSY) or self.active >= self.concurrency:
                return False
            self.active += 1
            self.state = check_transition(self.state, S.BUSY)
            return True

    def release(self) -> None:
        with self.lock:
            self.active = max(0, self.active - 1)
            self.last_used = time.monotonic()
            if self.state is not S.REMOVING:
                self.state = check_transition(self.state, state_for(self.active))
            self._freed.notify_all()

    def wait_free(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until a run slot is free; True if one is (or the container stopped serving)."""
        with self._freed:
            if self.active >= self.concurrency and self.state is S.BUSY:
                self._freed.wait(timeout_s)
            return self.active < self.concurrency or self.state is not S.BUSY

    def mark_removing(self, only_if_idle: bool = False) -> bool:
        """Move to REMOVING (``only_if_idle``: only an IDLE container with no run); True if it moved."""
        with self.lock:
            if self.state is S.REMOVING or (only_if_idle and (self.state is not S.IDLE or self.active)):
                return False
            self.state = S.REMOVING
            self._freed.notify_all()
            return True

    def started_ahead(self) -> None:
        """No invocation waited for this start (a ``min_instances`` one): its first run is a warm start."""
        with self.lock:
            self._cold_pending = False

    def take_cold(self) -> ColdFacts | None:
        """The cold-start facts for the container's first run (``None`` for every later run)."""
        with self.lock:
            if not self._cold_pending or self.init_info is None:
                return None
            self._cold_pending = False
            return ColdFacts(self.init_info.load_tier, self.init_info.load_s, self.init_ms or 0)

    # --- views --------------------------------------------------------------------------
    def view(self) -> ContainerView:
        return ContainerView(
            id=self.id, state=self.state, namespace=self.namespace, action=self.action_name,
            memory_mb=self.memory_mb, active=self.active, concurrency=self.concurrency, last_used=self.last_used,
        )

    def info(self, now_mono: float, now_epoch_ms: int) -> ContainerInfo:
        return ContainerInfo(
            id=self.id, state=self.state, namespace=self.namespace, action=self.action_name,
            model=self.action.exec.model if self.action else None, memory_mb=self.memory_mb, active=self.active,
            concurrency=self.concurrency, last_used_ms=now_epoch_ms - int((now_mono - self.last_used) * 1000),
            url=self.handle.url if self.handle else None,
        )
