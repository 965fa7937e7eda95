"""The container pool's policy: which container serves, what to start, what to evict (pure).

Containers move through a closed set of states (:class:`~faas_llm.types.ContainerState`)::

    PREWARMED --init--> STARTING --ready--> IDLE <--> BUSY
        |                   |                |         |
        +-------------------+----------------+---------+--> REMOVING (final)

A ``STARTING`` container without an action is a prewarm runtime still booting; with an
action it is loading that action's model. Choosing where an instance of an action
runs follows OpenWhisk's order: a warm container of the same action and namespace
with free capacity (``limits.concurrency`` runs at once), else one of that action
that is still starting, else a prewarmed runtime, else a new container if the node
has a free slot and the memory, else evict least-recently-used idle containers
(other actions) to make room, else no capacity. An idle container that keeps its action at
``min_instances`` on the node is never a victim (``min_instances`` maps (namespace, action) to it):
evicting it would only make the scheduler start it again, evicting something else.

Everything here is data in, decision out; the invoker (``invoker/pool.py``) applies it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from faas_llm.errors import InternalError
from faas_llm.types import ContainerState

S = ContainerState

#: the legal transitions of a container's state
TRANSITIONS: dict[ContainerState, frozenset[ContainerState]] = {
    S.PREWARMED: frozenset({S.STARTING, S.REMOVING}),
    S.STARTING: frozenset({S.PREWARMED, S.IDLE, S.BUSY, S.REMOVING}),
    S.IDLE: frozenset({S.BUSY, S.REMOVING}),
    S.BUSY: frozenset({S.IDLE, S.BUSY, S.REMOVING}),
    S.REMOVING: frozenset(),
}


def check_transition(old: ContainerState, new: ContainerState) -> ContainerState:
    """``new`` if the move from ``old`` is legal, else :class:`InternalError`."""
    if new not in TRANSITIONS[old]:
        raise InternalError(f"illegal container state change {old.value} -> {new.value}")
    return new


@dataclass(frozen=True)
class ContainerView:
    """What the policy knows of one container."""

    id: str
    state: ContainerState
    namespace: str | None = None
    action: str | None = None
    memory_mb: int = 0
    active: int = 0
    concurrency: int = 1
    #: when it last finished a run (or started), any monotonic clock in seconds
    last_used: float = 0.0

    @property
    def live(self) -> bool:
        return self.state is not S.REMOVING

    def serves(self, namespace: str, action: str) -> bool:
        return self.namespace == namespace and self.action == action

    @property
    def free_runs(self) -> int:
        """Runs it could take now (warm containers only)."""
        if self.state not in (S.IDLE, S.BUSY):
            return 0
        return max(0, self.concurrency - self.active)


def state_for(active: int) -> ContainerState:
    """The warm state of a container running ``active`` activations."""
    return S.BUSY if active > 0 else S.IDLE


@dataclass(frozen=True)
class PoolCapacity:
    max_containers: int
    memory_mb: int


def used(containers: Sequence[ContainerView]) -> tuple[int, int]:
    """(slots, memory MB) held by live containers."""
    live = [c for c in containers if c.live]
    return len(live), sum(c.memory_mb for c in live)


def has_room(containers: Sequence[ContainerView], memory_mb: int, capacity: PoolCapacity, freed_mb: int = 0) -> bool:
    slots, memory = used(containers)
    return slots < capacity.max_containers and memory - freed_mb + memory_mb <= capacity.memory_mb


class Outcome(str, Enum):
    WARM = "warm"  # a warm container of the action has free capacity
    WARMING = "warming"  # one of the action is starting and will have capacity
    PREWARMED = "prewarmed"  # initialise this prewarmed runtime with the action
    COLD = "cold"  # start a new container
    EVICT = "evict"  # remove these idle containers, then start a new one
    NO_CAPACITY = "no_capacity"


@dataclass(frozen=True)
class PoolChoice:
    outcome: Outcome
    container: str | None = None
    evict: tuple[str, ...] = ()


def _warm_key(c: ContainerView) -> tuple[int, float, str]:
    # pack work onto the busiest container that still has room; then the most recently used
    return (-c.active, -c.last_used, c.id)


def choose(
    containers: Sequence[ContainerView],
    namespace: str,
    action: str,
    memory_mb: int,
    capacity: PoolCapacity,
    *,
    concurrency: int = 1,
    min_instances: Mapping[tuple[str, str], int] | None = None,
) -> PoolChoice:
    """Where the next instance of ``namespace/action`` comes from (see the module docstring)."""
    live = [c for c in containers if c.live]
    warm = sorted((c for c in live if c.serves(namespace, action) and c.free_runs > 0), key=_warm_key)
    if warm:
        return PoolChoice(Outcome.WARM, warm[0].id)
    warming = sorted(
        (c for c in live if c.state is S.STARTING and c.serves(namespace, action) and c.active < concurrency),
        key=lambda c: (c.active, c.id),
    )
    if warming:
        return PoolChoice(Outcome.WARMING, warming[0].id)
    for prewarmed in sorted((c for c in live if c.state is S.PREWARMED), key=lambda c: (-c.last_used, c.id)):
        others = [c for c in live if c.id != prewarmed.id]
        if sum(c.memory_mb for c in others) + memory_mb <= capacity.memory_mb:
            return PoolChoice(Outcome.PREWARMED, prewarmed.id)
    if has_room(live, memory_mb, capacity):
        return PoolChoice(Outcome.COLD)
    victims = lru_victims(live, memory_mb, capacity, min_instances)
    if victims:
        return PoolChoice(Outcome.EVICT, evict=victims)
    return PoolChoice(Outcome.NO_CAPACITY)


def lru_victims(containers: Sequence[ContainerView], memory_mb: int, capacity: PoolCapacity,
                min_instances: Mapping[tuple[str, str], int] | None = None) -> tuple[str, ...]:
    """The fewest least-recently-used idle containers whose removal makes room (``()`` if none does).

    A container is never chosen when removing it would leave its action with fewer live containers
    (in ``containers``) than its ``min_instances`` (missing: 0)."""
    minimum = min_instances or {}
    live = [c for c in containers if c.live]
    idle = sorted((c for c in live if c.state is S.IDLE), key=lambda c: (c.last_used, c.id))
    count: dict[tuple[str, str], int] = {}
    for c in live:
        if c.namespace is not None and c.action is not None:
            count[(c.namespace, c.action)] = count.get((c.namespace, c.action), 0) + 1
    chosen: list[ContainerView] = []
    remaining = list(live)
    for victim in idle:
        if victim.namespace is not None and victim.action is not None:
            key = (victim.namespace, victim.action)
            if count[key] <= minimum.get(key, 0):
                continue  # it keeps its action at min_instances
            count[key] -= 1
        chosen.append(victim)
        remaining = [c for c in remaining if c.id != victim.id]
        if has_room(remaining, memory_mb, capacity):
            return tuple(c.id for c in chosen)
    return ()


def prewarm_deficit(
    containers: Sequence[ContainerView], target: int, capacity: PoolCapacity, prewarm_memory_mb: int = 0
) -> int:
    """How many prewarm runtimes to start now: up to ``target`` (booting ones count), within capacity."""
    live = [c for c in containers if c.live]
    have = sum(1 for c in live if c.state is S.PREWARMED or (c.state is S.STARTING and c.action is None))
    want = max(0, target - have)
    slots, memory = used(live)
    by_slots = capacity.max_containers - slots
    by_memory = (capacity.memory_mb - memory) // prewarm_memory_mb if prewarm_memory_mb > 0 else want
    return max(0, min(want, by_slots, by_memory))


def expired(containers: Sequence[ContainerView], now: float, keep_alive: dict[tuple[str, str], float]) -> list[str]:
    """Idle containers whose idle time reached their action's keep-alive, oldest first.

    ``keep_alive`` maps (namespace, action) to seconds; actions missing from it never expire.
    """
    out: list[ContainerView] = []
    for c in containers:
        if c.state is not S.IDLE or c.namespace is None or c.action is None:
            continue
        limit = keep_alive.get((c.namespace, c.action))
        if limit is not None and now - c.last_used >= limit:
            out.append(c)
    return [c.id for c in sorted(out, key=lambda c: (c.last_used, c.id))]


def keep_alive_removals(
    containers: Sequence[ContainerView], candidates: Sequence[str], now: float, *, until_needed: bool,
    max_idle_s: float,
) -> list[str]:
    """Of the idle containers past their action's keep-alive (``candidates``), those to remove now.

    With ``until_needed`` an idle container stays while its slot is not wanted: the pool evicts idle
    containers least-recently-used when a start needs room (:func:`choose`, :func:`lru_victims`), and
    placement counts idle containers as free slots, so keeping one costs no start anything; it goes by
    time only after ``max_idle_s`` idle (a bound on how long an action nobody calls holds its memory).
    Without ``until_needed`` every candidate goes (the keep-alive is a timeout, OpenWhisk's rule).
    """
    if not until_needed:
        return list(candidates)
    by_id = {c.id: c for c in containers if c.live}
    return [cid for cid in candidates
            if cid in by_id and by_id[cid].state is S.IDLE and now - by_id[cid].last_used >= max_idle_s]
