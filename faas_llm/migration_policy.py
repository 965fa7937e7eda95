"""Live-migration planning (pure): should a running inference move away so a waiting request starts sooner?

ServerlessLLM's rule (OSDI 2024, section 5): when the node where a new instance would
start soonest (its checkpoint is in DRAM or on SSD there) has no free GPU, a running
inference on it may be migrated to another node. Token-based migration keeps the
source decoding while

1. the destination loads the victim's model (``load_s``: the destination's queue of
   pending loads plus size / bandwidth of its fastest tier holding the checkpoint), and
2. the destination recomputes the KV cache from the tokens so far
   (``resume_s = a * tokens + b``, :class:`MigrationCost`),

then the source stops and its slot frees: after ``move_s = load_s + resume_s``. The
waiting request then loads on the freed node (``request_load_s``), so it could start
after ``move_s + request_load_s``. A move is worth it only when

* the victim would not finish on its own first (``move_s < victim.remaining_s``;
  otherwise the slot frees sooner without moving anything), and
* the waiting request starts sooner than its best option without migration
  (``baseline_s``: a start on another node, a wait for a busy warm instance, or
  ``inf`` when nothing can take it).

Only tokens travel, so the victim's own completion is not delayed. One victim is moved
per plan (an instance occupies one slot); the freed memory must cover the request's.
Everything here is data in, decision out; a scheduler or a simulator applies the plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from faas_llm.errors import ConfigError


@dataclass(frozen=True)
class MigrationCost:
    """Resume cost at the destination: ``a_s_per_token * tokens + b_s`` seconds."""

    a_s_per_token: float
    b_s: float

    def __post_init__(self) -> None:
        if self.a_s_per_token < 0 or self.b_s < 0 or not math.isfinite(self.a_s_per_token + self.b_s):
            raise ConfigError(f"migration cost needs finite a >= 0 and b >= 0, got a={self.a_s_per_token} b={self.b_s}")

    def resume_s(self, tokens: int) -> float:
        return self.a_s_per_token * max(0, tokens) + self.b_s


@dataclass(frozen=True)
class Destination:
    """A node that could host the victim: seconds until the victim's model is loaded there."""

    node: str
    load_s: float


@dataclass(frozen=True)
class RunningInference:
    """A candidate victim on the full node."""

    instance: str
    model: str
    #: prompt tokens plus tokens generated so far (what the destination recomputes)
    tokens: int
    #: expected seconds until it finishes on its own
    remaining_s: float
    #: GPU memory its instance frees on the source
    memory_mb: int
    #: nodes with a free slot and memory for the victim's model (the full node excluded)
    destinations: tuple[Destination, ...]
    #: per-model resume cost; ``None``: the plan's default
    cost: MigrationCost | None = None


@dataclass(frozen=True)
class MigrationPlan:
    """Move ``instance`` to ``destination``; the waiting request could start after ``start_s``."""

    instance: str
    destination: str
    #: seconds until the source slot frees (destination load + resume)
    move_s: float
    #: seconds until the waiting request could serve on the freed node
    start_s: float


def plan_migration(
    *,
    request_load_s: float,
    request_memory_mb: int,
    source_free_memory_mb: int,
    baseline_s: float,
    running: Sequence[RunningInference],
    cost: MigrationCost,
    min_gain_s: float = 0.0,
) -> MigrationPlan | None:
    """The best single move that lets the waiting request start sooner, or ``None``.

    ``request_load_s``: the waiting request's load time on the full node once a slot
    frees (queue + size / bandwidth there). ``source_free_memory_mb``: memory free there
    now (besides the victim's). ``min_gain_s``: a plan must beat ``baseline_s`` by more
    than this. Ties go to the earlier start, then the shorter move, then instance and
    destination ids (deterministic).
    """
    if request_load_s < 0 or min_gain_s < 0:
        raise ConfigError(f"request_load_s and min_gain_s must be >= 0, got {request_load_s}, {min_gain_s}")
    best: tuple[float, float, str, str] | None = None
    for victim in running:
        if source_free_memory_mb + victim.memory_mb < request_memory_mb:
            continue
        resume = (victim.cost or cost).resume_s(victim.tokens)
        for dest in victim.destinations:
            move = max(0.0, dest.load_s) + resume
            if move >= victim.remaining_s:
                continue  # it ends on its own before the move completes: just wait for it
            start = move + request_load_s
            if start + min_gain_s >= baseline_s:
                continue
            key = (start, move, victim.instance, dest.node)
            if best is None or key < best:
                best = key
    if best is None:
        return None
    start, move, instance, node = best
    return MigrationPlan(instance=instance, destination=node, move_s=move, start_s=start)


@dataclass(frozen=True)
class WaitPlan:
    """Move nothing: ``instance`` ends on its own after ``free_s``; the waiting request could start after
    ``start_s`` in the slot it leaves."""

    instance: str
    free_s: float
    start_s: float


def plan_wait(
    *,
    request_load_s: float,
    request_memory_mb: int,
    source_free_memory_mb: int,
    baseline_s: float,
    running: Sequence[RunningInference],
    min_gain_s: float = 0.0,
) -> WaitPlan | None:
    """Waiting for the run on the full node that ends first, where that beats ``baseline_s`` (by more than
    ``min_gain_s``), or ``None``. The other half of :func:`plan_migration`: a run that ends before any move
    of it could complete is left alone, and the request is better off taking its slot when it ends than
    loading far away (a registry fetch where the full node holds the model in DRAM)."""
    if request_load_s < 0 or min_gain_s < 0:
        raise ConfigError(f"request_load_s and min_gain_s must be >= 0, got {request_load_s}, {min_gain_s}")
    fits = [v for v in running if source_free_memory_mb + v.memory_mb >= request_memory_mb]
    if not fits:
        return None
    first = min(fits, key=lambda v: (v.remaining_s, v.instance))
    start = first.remaining_s + request_load_s
    if start + min_gain_s >= baseline_s:
        return None
    return WaitPlan(instance=first.instance, free_s=first.remaining_s, start_s=start)


def remaining_s(generated: int, max_tokens: int, elapsed_s: float, expected_run_s: float) -> float:
    """Expected seconds until a running generation ends on its own.

    With its ``max_tokens`` known and tokens made, the tokens left at the pace so far (an upper
    bound: it may stop earlier); else what the action's usual run time leaves after ``elapsed_s``.
    """
    if max_tokens > 0 and generated > 0 and elapsed_s > 0:
        return max(0.0, (max_tokens - generated) * elapsed_s / generated)
    return max(0.0, expected_run_s - elapsed_s)


def full_nodes_sooner(loads: Sequence[tuple[str, float, bool]], baseline_s: float) -> list[tuple[str, float]]:
    """The full nodes where the waiting request would load sooner than ``baseline_s`` once a slot freed.

    ``loads``: (node, request load seconds there, whether it can start now) for each non-draining
    node. Sorted by load seconds, then node id: the candidates for :func:`plan_migration`.
    """
    return sorted(((node, load) for node, load, can_start in loads if not can_start and load < baseline_s),
                  key=lambda x: (x[1], x[0]))
