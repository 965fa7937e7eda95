"""A provable lower bound on the mean startup latency any scheduler can reach on a cluster.

**What it bounds.** Every policy on the same cluster: any placement, dispatch order, keep-alive,
eviction, prefetching (even of requests not yet arrived), any knowledge of the future, loads that
take no time at all. Only two facts of the cluster are kept: it has ``G`` GPUs (all nodes pooled),
and request ``j`` (arriving at ``t_j``) runs ``p_j`` seconds on ``g_j`` GPUs without interruption
(its model's instance: whole GPUs, tensor parallel).

**Why it bounds them (the fast single machine relaxation).** Take any feasible schedule, with
request ``j`` starting at ``S_j >= t_j`` and completing at ``C_j = S_j + p_j``. At every instant the
running requests hold at most ``G`` GPUs. Turn it into a schedule of one machine of speed ``G``
where job ``j`` has ``w_j = g_j p_j`` units of work: at each instant give each running request ``g_j``
units of speed. This uses at most speed ``G`` and finishes job ``j`` exactly at ``C_j``. So
``sum C_j`` of the real schedule is at least the minimum of ``sum C_j`` over preemptive schedules
of that single machine, which SRPT (shortest remaining work first) attains (Schrage 1968). Hence
``sum (S_j - t_j) = sum C_j - sum t_j - sum p_j >= SRPT(sum C) - sum t_j - sum p_j``, and also
``>= 0``. Dropping requests only removes work, so the same holds for any subset of the requests,
and every request outside the subset contributes ``>= 0``: the bound is the best over a few subsets
(all requests; those at least as long as a quantile of run times; the requests of each window of
30 s to 1 h, whose disjoint bounds add up).

**What it does not count (why it is loose at light load).** Load time and cache contents: an
offline scheduler that knows every arrival could prefetch each model before its request; with
32 GPU slots for 32 models most of them could stay resident. So the bound is near zero wherever the
GPUs are not saturated and is meaningful where requests queue for GPU capacity (bursts).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from faas_llm.errors import ConfigError


@dataclass(frozen=True)
class Job:
    t: float  # arrival
    p: float  # run seconds
    g: int  # GPUs held while running


def srpt_completion_sum(jobs: Sequence[Job], speed: float) -> float:
    """Sum of completion times of preemptive SRPT on one machine of ``speed`` (work ``g * p`` each)."""
    if speed <= 0:
        raise ConfigError("speed must be > 0")
    order = sorted(jobs, key=lambda j: j.t)
    heap: list[float] = []  # remaining work of the jobs present
    total = 0.0
    t = 0.0
    i, n = 0, len(order)
    while i < n or heap:
        if not heap:
            t = max(t, order[i].t)
        while i < n and order[i].t <= t:
            heapq.heappush(heap, order[i].g * order[i].p)
            i += 1
        rem = heapq.heappop(heap)
        next_arrival = order[i].t if i < n else math.inf
        finish = t + rem / speed
        if finish <= next_arrival:
            t = finish
            total += t
        else:
            heapq.heappush(heap, rem - (next_arrival - t) * speed)
            t = next_arrival
    return total


def wait_bound(jobs: Sequence[Job], gpus: int) -> float:
    """A lower bound on ``sum (S_j - t_j)`` over ``jobs`` for any schedule on ``gpus`` GPUs (>= 0)."""
    if not jobs:
        return 0.0
    return max(0.0, srpt_completion_sum(jobs, gpus) - sum(j.t + j.p for j in jobs))


def startup_lower_bound(jobs: Sequence[Job], gpus: int, *, windows_s: Sequence[float] = (30, 120, 600, 3600)) -> float:
    """Lower bound on the *mean* startup latency of ``jobs``: the best of the subset bounds (see module)."""
    if not jobs:
        return 0.0
    subsets: list[list[Job]] = [list(jobs)]
    runs = sorted(j.p for j in jobs)
    for q in (0.25, 0.5, 0.75, 0.9):
        cut = runs[int(q * (len(runs) - 1))]
        subsets.append([j for j in jobs if j.p >= cut])
    best = max(wait_bound(s, gpus) for s in subsets)
    t0 = min(j.t for j in jobs)
    for window in windows_s:
        by_window: dict[int, list[Job]] = {}
        for j in jobs:
            by_window.setdefault(int((j.t - t0) // window), []).append(j)
        # disjoint subsets: their bounds add up
        best = max(best, sum(wait_bound(w, gpus) for w in by_window.values()))
    return best / len(jobs)
