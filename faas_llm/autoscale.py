"""Autoscaling of an action (pure): how many instances it wants, which idle ones go.

Per action (:class:`~faas_llm.types.Scaling`): ``min_instances`` always kept,
``max_instances`` never exceeded, ``target_concurrency`` activations per instance
(Knative's autoscaling target, ServerlessLLM's ``auto_scaling_config``; see :func:`target_per_instance`),
``keep_alive`` seconds idle before an instance is removed (0: at once; scale to zero
when ``min_instances`` is 0). ``min_instances`` hold with no invocation at all: an action whose
``min_instances > 0`` is scheduled from the moment it is created or updated (Knative's minScale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from faas_llm.types import Scaling


def target_per_instance(scaling: Scaling, concurrency: int | None = None) -> int:
    """Activations one instance is meant to carry: the action's ``limits.concurrency`` (OpenWhisk's
    intra-container concurrency, Knative's ``containerConcurrency``: the most runs one container batches),
    or a lower soft target the action sets with ``target_concurrency`` above 1. As in Knative, with no soft
    target the hard limit is the target (``target_concurrency`` 1, the default, is "not set": one run per
    instance is ``limits.concurrency`` 1). ``concurrency`` ``None`` (not known): ``target_concurrency`` alone."""
    if concurrency is None:
        return scaling.target_concurrency
    hard = max(1, concurrency)
    soft = scaling.target_concurrency
    return min(hard, soft) if soft > 1 else hard


def desired_instances(scaling: Scaling, in_flight: int, backlog: int, concurrency: int | None = None) -> int:
    """Instances for ``in_flight`` running plus ``backlog`` queued activations, within [min, max]."""
    demand = max(0, in_flight) + max(0, backlog)
    wanted = math.ceil(demand / target_per_instance(scaling, concurrency)) if demand else 0
    return max(scaling.min_instances, min(scaling.max_instances, wanted))


def instances_to_start(scaling: Scaling, instances: int, in_flight: int, backlog: int,
                       concurrency: int | None = None) -> int:
    """New instances to start now, given ``instances`` live or starting (never above max)."""
    room = scaling.max_instances - instances
    return max(0, min(room, desired_instances(scaling, in_flight, backlog, concurrency) - instances))


def starts_below_min(scaling: Scaling, instances: int) -> int:
    """Of the starts, how many only bring the action up to ``min_instances`` (capped by max): these start
    even with no demand, and never "wait for a warm instance" instead (an idle instance is not a new one)."""
    return max(0, min(scaling.min_instances, scaling.max_instances) - max(0, instances))


@dataclass(frozen=True)
class IdleInstance:
    id: str
    idle_since: float  # seconds on any clock shared with ``now``


def scale_in(scaling: Scaling, idle: Sequence[IdleInstance], instances: int, now: float) -> list[str]:
    """Idle instances to remove: idle at least ``keep_alive``, oldest first, keeping ``min_instances``.

    ``instances`` is the action's instance count across the cluster (idle ones included).
    """
    removable = max(0, instances - scaling.min_instances)
    expired = sorted((i for i in idle if now - i.idle_since >= scaling.keep_alive), key=lambda i: (i.idle_since, i.id))
    return [i.id for i in expired[:removable]]
