"""Observed run times per action, shared by the invokers: the placement's tail-aware warm-wait estimate.

The placement (:mod:`invoker.scheduler`) estimates when a busy warm instance will be free with the
action's run-time distribution (:class:`faas_llm.placement.RunTimeDistribution`) given how long its
run has lasted, and the spread of that estimate (the simulator's "ours"). The inputs:

* run times: every activation record this invoker stores (:class:`RecordingStore`, the dispatcher's
  store) adds its duration to an in-memory buffer (bounded per action); the maintenance loop flushes
  it to ``keys.action_run_times`` (a list, newest first, capped at :data:`SAMPLES`) in one pipeline,
  so any invoker placing the action sees every node's runs. Records of runs that did not run (failure
  records: 0 ms) and cold starts (their time includes the model load) are not counted.
* busy-since: the running-run registry (``keys.node_running`` / ``keys.activation_running``, written
  when a run starts, what a migration reads) gives each run's container and start time.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from faas_llm import migration
from faas_llm.activations import ActivationStore, ScriptRunner
from faas_llm.keys import Keys
from faas_llm.placement import RunTimeDistribution
from faas_llm.types import ActivationRecord, ContainerState, NodeReport

log = logging.getLogger(__name__)
#: run times kept per action in Redis (the most recent ones) and in each invoker's buffer between flushes
SAMPLES = 256
#: fewer observed runs than this: no distribution (the placement keeps the plain estimate)
MIN_SAMPLES = 5


def run_seconds(record: ActivationRecord) -> float | None:
    """The run time a record contributes to its action's distribution, or ``None`` (not a warm run)."""
    if record.duration <= 0 or record.coldStart:
        return None
    return record.duration / 1000


class RunTimeBuffer:
    """Run times observed here since the last flush (at most :data:`SAMPLES` per action; thread-safe)."""

    def __init__(self, keys: Keys, cap: int = SAMPLES) -> None:
        self.keys, self.cap = keys, cap
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], deque[float]] = {}

    def observe(self, namespace: str, action: str, seconds: float) -> None:
        with self._lock:
            self._pending.setdefault((namespace, action), deque(maxlen=self.cap)).append(seconds)

    def flush(self, r: Any) -> int:
        """Push the buffered run times to Redis (one pipeline); returns how many. On a Redis error they are
        dropped (a distribution of recent runs loses a few; nothing waits on them)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        pipe = r.pipeline(transaction=False)
        for (ns, name), values in pending.items():
            key = self.keys.action_run_times(ns, name)
            pipe.lpush(key, *(f"{v:.4f}" for v in values))
            pipe.ltrim(key, 0, self.cap - 1)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not store run times: %s", exc)
            return 0
        return sum(len(v) for v in pending.values())


class RecordingStore(ActivationStore):
    """The activation store, also feeding each stored record's run time to a :class:`RunTimeBuffer`."""

    def __init__(self, r: Any, keys: Keys, retention_s: int, buffer: RunTimeBuffer, *,
                 run_script: ScriptRunner | None = None) -> None:
        super().__init__(r, keys, retention_s, run_script=run_script)
        self.run_times = buffer

    def _saw(self, record: ActivationRecord) -> None:
        seconds = run_seconds(record)
        if seconds is not None:
            self.run_times.observe(record.namespace, record.name, seconds)

    def complete(self, record: ActivationRecord) -> bool:
        stored = super().complete(record)
        if stored:
            self._saw(record)
        return stored

    def complete_and_ack(self, record: ActivationRecord, queue: str, group: str, entry_id: str,
                         claim: str, consumer: str, ran_on: Sequence[str] = ()) -> bool:
        stored = super().complete_and_ack(record, queue, group, entry_id, claim, consumer, ran_on)
        if stored:
            self._saw(record)
        return stored


def parse_samples(raw: Iterable[Any]) -> list[float]:
    out = []
    for x in raw:
        try:
            out.append(float(x.decode() if isinstance(x, bytes) else x))
        except (TypeError, ValueError):
            continue
    return out


def read_distribution(r: Any, keys: Keys, namespace: str, action: str,
                      min_samples: int = MIN_SAMPLES) -> RunTimeDistribution | None:
    """The action's run-time distribution from Redis, or ``None`` with too little history."""
    return RunTimeDistribution.of(parse_samples(r.lrange(keys.action_run_times(namespace, action), 0, SAMPLES - 1)),
                                  min_samples)


def elapsed_by_container(runs: Sequence[migration.RunningRun | None], namespace: str, action: str,
                         now_ms: int) -> dict[str, list[float]]:
    """Container id -> seconds each of the action's runs on it has lasted (pure)."""
    out: dict[str, list[float]] = {}
    for run in runs:
        if run is None or run.namespace != namespace or run.action != action or not run.started_ms:
            continue
        out.setdefault(run.container, []).append(max(0.0, (now_ms - run.started_ms) / 1000))
    return out


def busy_nodes(reports: Sequence[NodeReport], namespace: str, action: str) -> list[str]:
    """Nodes with a busy container of the action (where busy-since matters)."""
    return sorted({rep.node for rep in reports for c in rep.containers
                   if c.namespace == namespace and c.action == action and c.state is ContainerState.BUSY})


def busy_elapsed(r: Any, keys: Keys, reports: Sequence[NodeReport], namespace: str, action: str,
                 now_ms: int) -> Mapping[str, list[float]]:
    """Container id -> elapsed seconds of the action's runs on it, from the running-run registry."""
    return elapsed_by_container(registered_runs(r, keys, busy_nodes(reports, namespace, action)), namespace, action,
                                now_ms)


def registered_runs(r: Any, keys: Keys, nodes: Sequence[str]) -> list[migration.RunningRun | None]:
    """The running-run registry's runs on ``nodes`` (one pipeline of ``ZRANGE``, one ``MGET``; an entry
    gone or unreadable: ``None``)."""
    if not nodes:
        return []
    pipe = r.pipeline(transaction=False)
    for node in nodes:
        pipe.zrange(keys.node_running(node), 0, -1)
    ids = [a.decode() if isinstance(a, bytes) else a for batch in pipe.execute() for a in batch]
    if not ids:
        return []
    runs: list[migration.RunningRun | None] = []
    for raw in r.mget([keys.activation_running(a) for a in ids]):
        try:
            runs.append(migration.RunningRun.model_validate_json(raw) if raw else None)
        except ValueError:
            runs.append(None)
    return runs


# --- reports corrected by the registry ----------------------------------------------------------


def runs_by_container(runs: Sequence[migration.RunningRun | None], now_ms: int) -> dict[str, int]:
    """Container id -> runs registered on it and not past their deadline (pure)."""
    out: dict[str, int] = {}
    for run in runs:
        if run is None or (run.deadline_ms and run.deadline_ms < now_ms):
            continue
        out[run.container] = out.get(run.container, 0) + 1
    return out


def reports_with_runs(reports: Sequence[NodeReport], counts: Mapping[str, int]) -> list[NodeReport]:
    """The reports with each container's active runs raised to what the registry holds (pure).

    A node's report is up to one heartbeat old, the registry is written by the claim itself: a run that
    began since the last heartbeat shows in a report as an idle container, which the placement would
    count as a free (evictable) slot and send a start to a node whose pool answers ``no_capacity``.
    Only raises: a report's own count stands where the registry holds fewer."""
    out: list[NodeReport] = []
    for report in reports:
        changed = False
        containers = []
        for c in report.containers:
            n = counts.get(c.id, 0)
            if n > c.active and c.state in (ContainerState.IDLE, ContainerState.BUSY):
                c = c.model_copy(update={"active": n, "state": ContainerState.BUSY})
                changed = True
            containers.append(c)
        out.append(report.model_copy(update={"containers": containers}) if changed else report)
    return out


def idle_nodes(reports: Sequence[NodeReport]) -> list[str]:
    """Nodes whose report shows a container with room for a run (where a stale report can mislead)."""
    return sorted({rep.node for rep in reports for c in rep.containers
                   if c.state is ContainerState.IDLE or (c.state is ContainerState.BUSY and c.active < c.concurrency)})


def with_registered_runs(r: Any, keys: Keys, reports: Sequence[NodeReport], now_ms: int) -> list[NodeReport]:
    """:func:`reports_with_runs` with the registry's runs on the nodes that show room (nothing read where
    no node does)."""
    runs = registered_runs(r, keys, idle_nodes(reports))
    return reports_with_runs(reports, runs_by_container(runs, now_ms)) if runs else list(reports)
