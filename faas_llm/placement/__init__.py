"""Placement policies: on which node should a new instance of a model start? (pure functions)

A policy takes plain data — one :class:`NodeView` per node and a
:class:`PlacementRequest` — and returns a :class:`Decision` (node, estimated seconds
until the model could serve there, and the tier it would load from) or ``None`` when
no node can take it. No I/O: the invoker builds the views from Redis (node reports and
cache inventories, see :func:`views_from_reports`) and a simulator builds them from a
trace; both get the same decisions.

Modules: :mod:`.model` (views, requests, decisions, the cost model), :mod:`.distribution`
(an action's run-time distribution), :mod:`.policies` (ours and ServerlessLLM's rule),
:mod:`.baselines` (blind baselines), :mod:`.reports` (Redis records -> views).

Policies (``settings.placement_policy`` names one; :func:`make_policy`):

``locality`` (ours)
    For each node, the time until the model could serve there is the minimum of

    * waiting for a warm instance of the model: 0 when one is idle, else the
      expected free time of the soonest busy one; and
    * starting a new instance (only with a free slot and memory): the node's queue of
      pending loads, plus the runtime's boot time unless a prewarmed runtime is ready
      there, plus ``size / bandwidth`` of the fastest tier that holds the checkpoint
      (DRAM, SSD, the registry, which holds everything).

    It picks the node with the smallest estimate; ties go to the faster tier, then
    to the node id (deterministic). It waits for a busy warm instance only when that
    is *clearly* sooner than the best load (its expected free time plus ``warm_z``
    standard deviations <= the load, where the views carry the deviation): a busy
    instance's free time is an estimate of a heavy-tailed quantity, a load's is not.
    Callers that know an action's run-time distribution estimate a busy instance's
    free time with :meth:`RunTimeDistribution.expected_remaining` (``E[R - a | R > a]``
    for an instance that has run ``a`` s, rather than "mean - a") and its spread with
    :meth:`RunTimeDistribution.remaining_variance`. An instance still *starting* is a
    future server too (:func:`starting_free`): it covers one queued request when its load is
    done and is free one run later; a view that lists it among the busy instances
    (``views_from_reports(starting_as_busy=True)``) lets a deep queue wait for the starts
    already under way instead of starting one more load per queued request.
``serverlessllm``
    ServerlessLLM's storage-aware rule: among nodes with a free slot and a local
    copy, DRAM costs ``size / bw_dram`` (no queue), SSD costs
    ``queue + size / bw_ssd``; pick the minimum. Warm instances are not modelled.
    With no local copy anywhere it falls back to a registry load on the node with
    the shortest queue, which ServerlessLLM does not: its scheduler
    (``sllm/schedulers/storage_aware_scheduler.py``) considers only nodes that hold the
    checkpoint, and when none of them has a free GPU the request stays queued and is
    retried every second; nothing is downloaded at run time. ``serverlessllm-strict``
    returns ``None`` there instead, as ServerlessLLM does.
``random``
    A seeded random node among those with a free slot.
``round-robin``
    The next node (by id) with a free slot, in turn.
``hash``
    OpenWhisk's home invoker: ``hash(namespace/action)`` picks a home node among
    all nodes (sorted by id); when it is full, step to the next one.
``least-loaded``
    The node with the most free slots (then the shortest load queue, then the id).
"""

from __future__ import annotations

from collections.abc import Callable

from faas_llm.errors import ConfigError
from faas_llm.placement.baselines import (
    HashHomePolicy,
    LeastLoadedPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    stable_hash,
)
from faas_llm.placement.distribution import RunTimeDistribution
from faas_llm.placement.model import (
    DEFAULT_BANDWIDTH,
    Decision,
    NodeView,
    PlacementPolicy,
    PlacementRequest,
    load_estimate,
    seconds_or_inf,
    starting_free,
    starting_load_left,
    warm_wait,
    warm_wait_bounded,
    with_start_under_way,
)
from faas_llm.placement.policies import LocalityPolicy, ServerlessLLMPolicy
from faas_llm.placement.reports import views_from_reports

__all__ = [
    "DEFAULT_BANDWIDTH", "POLICIES", "Decision", "HashHomePolicy", "LeastLoadedPolicy", "LocalityPolicy", "NodeView",
    "PlacementPolicy", "PlacementRequest", "RandomPolicy", "RoundRobinPolicy", "RunTimeDistribution",
    "ServerlessLLMPolicy", "load_estimate", "make_policy", "seconds_or_inf", "stable_hash", "starting_free",
    "starting_load_left", "views_from_reports", "warm_wait", "warm_wait_bounded", "with_start_under_way",
]

POLICIES: dict[str, Callable[[int], PlacementPolicy]] = {
    "locality": lambda seed: LocalityPolicy(),
    "serverlessllm": lambda seed: ServerlessLLMPolicy(),
    "serverlessllm-strict": lambda seed: ServerlessLLMPolicy(name="serverlessllm-strict", registry_fallback=False),
    "random": lambda seed: RandomPolicy(seed=seed),
    "round-robin": lambda seed: RoundRobinPolicy(),
    "hash": lambda seed: HashHomePolicy(),
    "least-loaded": lambda seed: LeastLoadedPolicy(),
}


def make_policy(name: str, seed: int = 0) -> PlacementPolicy:
    """A fresh policy (with its own state) by registry name; unknown names raise ConfigError."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown placement policy {name!r}: choose one of {', '.join(sorted(POLICIES))}") from None
    return factory(seed)
