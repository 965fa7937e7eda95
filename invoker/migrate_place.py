"""Migration-aware placement (ServerlessLLM's), the I/O around :func:`faas_llm.migration_policy.plan_migration`.

When the node where a waiting cold start would begin soonest is full, the scheduler asks
:meth:`MigrationPlacer.consider`. It gathers the real inputs: the runs on that node
(``keys.node_running``) with their token counts (the source runtime's ``/export`` snapshot)
and expected remaining time (:func:`faas_llm.migration_policy.remaining_s`), where each could
go (the placement cost model on the victim's action) and the resume cost ``a * tokens + b``
(``settings.migration_cost_a_s`` / ``migration_cost_b_s``). With a plan it records it
(``keys.migration_plan``: the start waits for it) and queues the migration (Celery
``faas_llm.migrate``, :func:`faas_llm.jobs.send_migrate`). Once the victim's slot freed (the
source releases it at the hand-off) the start goes to that node; if the migration failed or was
aborted, placement goes on as if there had been no plan. Where a run there ends on its own sooner
than any move of it (:func:`faas_llm.migration_policy.plan_wait`), the start is held the same way
for its slot, without a migration: waiting ~0.3 s for a short run beats a registry fetch elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from faas_llm import migration
from faas_llm.errors import FaasLLMError
from faas_llm.keys import Keys
from faas_llm.migration_policy import (
    Destination,
    MigrationCost,
    MigrationPlan,
    RunningInference,
    WaitPlan,
    full_nodes_sooner,
    plan_migration,
    plan_wait,
    remaining_s,
)
from faas_llm.placement import Decision, NodeView, PlacementRequest, load_estimate, views_from_reports
from faas_llm.runtime_protocol import EXPORT_PATH, ExportSnapshot, export_body, read_reply
from faas_llm.settings import Settings
from faas_llm.types import Action, CacheInventory, NodeReport, now_ms
from invoker import streams

log = logging.getLogger(__name__)
SNAPSHOT_TIMEOUT_S = 2.0
#: a planned migration holds the waiting start at least this long (then placement goes on without it)
MIN_HOLD_MS = 15_000


@dataclass(frozen=True)
class Hold:
    """A migration frees a slot on ``node`` for the waiting start; ``ready``: it is free now."""

    node: str
    ready: bool


class MigrationPlacer:
    def __init__(self, settings: Settings, r: Any, keys: Keys, send_migrate: Callable[[str, str], None],
                 expected_run_s: Callable[[str, str], float], model_size: Callable[[str], int],
                 boot_s: Callable[[], float] = lambda: 0.0) -> None:
        self.settings, self.r, self.keys = settings, r, keys
        self.send_migrate, self.expected_run_s, self.model_size, self.boot_s = (
            send_migrate, expected_run_s, model_size, boot_s)
        self.cost = MigrationCost(settings.migration_cost_a_s, settings.migration_cost_b_s)
        self.http = requests.Session()
        self.group = keys.consumer_group()

    def consider(self, action: Action, request: PlacementRequest, views: Sequence[NodeView], decision: Decision | None,
                 reports: Sequence[NodeReport], inventories: Mapping[str, CacheInventory]) -> Hold | None:
        """``None``: place as the policy decided; else wait for (or start on) the node a migration frees."""
        key = self.keys.migration_plan(action.namespace, action.name)
        raw = self.r.get(key)
        if raw:
            held = self._held(key, raw, views)
            if held is not None:
                return held
        if not self.settings.migration_placement:
            return None
        baseline = decision.startup_s if decision is not None else math.inf
        loads = [(v.node, load_estimate(request, v)[0], v.can_start(request.memory_mb))
                 for v in views if not v.draining]
        by_node = {v.node: v for v in views}
        for node, load in full_nodes_sooner(loads, baseline)[:2]:
            candidates = self._running(node, reports, inventories)
            plan = plan_migration(request_load_s=load, request_memory_mb=request.memory_mb,
                                  source_free_memory_mb=by_node[node].free_memory_mb, baseline_s=baseline,
                                  running=[inference for _, inference in candidates.values()], cost=self.cost)
            wait = plan_wait(request_load_s=load, request_memory_mb=request.memory_mb,
                             source_free_memory_mb=by_node[node].free_memory_mb, baseline_s=baseline,
                             running=self._waitable(action, candidates))
            if wait is not None and (plan is None or wait.start_s <= plan.start_s):
                if self._wait(key, node, wait):
                    log.info("placement: %s/%s waits for %s to end on %s (~%.2fs) and starts there in ~%.2fs "
                             "(instead of %.2fs)", action.namespace, action.name, wait.instance, node, wait.free_s,
                             wait.start_s, baseline)
                    return Hold(node, ready=False)
                continue
            if plan is not None and self._start(key, node, plan):
                log.info("migration-aware placement: moving %s from %s to %s so %s/%s starts on %s in ~%.2fs "
                         "(instead of %.2fs)", plan.instance, node, plan.destination, action.namespace, action.name,
                         node, plan.start_s, baseline)
                return Hold(node, ready=False)
        return None

    def _held(self, key: str, raw: str, views: Sequence[NodeView]) -> Hold | None:
        try:
            held = json.loads(raw)
            victim, node = str(held["victim"]), str(held["node"])
        except (ValueError, KeyError, TypeError):
            self.r.delete(key)
            return None
        phase = self.r.hget(self.keys.migration(victim), "phase")
        view = next((v for v in views if v.node == node), None)
        if view is None or view.draining or phase in (migration.FAILED, migration.ABORTED):
            self.r.delete(key)  # the migration did not happen: place as usual
            return None
        if view.free_slots > 0:
            self.r.delete(key)
            return Hold(node, ready=True)
        return Hold(node, ready=False)

    def _waitable(self, action: Action, candidates: Mapping[str, tuple[migration.RunningRun, RunningInference]]
                  ) -> list[RunningInference]:
        """The runs whose slot the start may take when they end: another action's (the action's own busy
        instance is a warm wait, the policy's option), with nothing queued for it (a queued request
        would take the container when the run ends; :func:`faas_llm.migration_policy.plan_wait`)."""
        out = []
        for aid, (run, inference) in candidates.items():
            if (run.namespace, run.action) == (action.namespace, action.name):
                continue
            if streams.backlog(self.r, self.keys.action_queue(run.namespace, run.action), self.group):
                continue
            if self.r.exists(self.keys.wait_hold(aid)):
                continue  # waited for once already (that hold lapsed or served): not again
            out.append(inference)
        return out

    def _wait(self, key: str, node: str, wait: WaitPlan) -> bool:
        """Hold the start for ``node`` until its run ends (the hold lapses after three times the expected
        wait, at least :data:`MIN_HOLD_MS`: then placement goes on as usual)."""
        value = json.dumps({"victim": wait.instance, "node": node, "wait": True, "start_s": wait.start_s,
                            "planned_ms": now_ms()})
        hold_ms = max(MIN_HOLD_MS, int(wait.free_s * 3000))
        if not self.r.set(key, value, nx=True, px=hold_ms):
            return False
        self.r.set(self.keys.wait_hold(wait.instance), "1", px=10 * hold_ms)
        return True

    def _start(self, key: str, node: str, plan: MigrationPlan) -> bool:
        hold_ms = max(MIN_HOLD_MS, int(plan.move_s * 3000))
        value = json.dumps({"victim": plan.instance, "node": node, "destination": plan.destination,
                            "start_s": plan.start_s, "planned_ms": now_ms()})
        if not self.r.set(key, value, nx=True, px=hold_ms):
            return False
        try:
            self.send_migrate(plan.instance, plan.destination)
        except Exception as exc:  # the broker cannot take it: no plan
            log.warning("could not queue the migration of %s: %s", plan.instance, exc)
            self.r.delete(key)
            return False
        return True

    # --- inputs ---------------------------------------------------------------------------------
    def _running(self, node: str, reports: Sequence[NodeReport], inventories: Mapping[str, CacheInventory]
                 ) -> dict[str, tuple[migration.RunningRun, RunningInference]]:
        """The runs on ``node`` that could move or be waited for: each run's registry entry, and its tokens,
        remaining time and destinations."""
        report = next((rep for rep in reports if rep.node == node), None)
        memory = {c.url: c.memory_mb for c in report.containers} if report else {}
        out: dict[str, tuple[migration.RunningRun, RunningInference]] = {}
        for aid in migration.running_on(self.r, self.keys, node):
            run = migration.running(self.r, self.keys, aid)
            if run is None or run.node != node or self.r.hget(self.keys.migration(aid), "phase") in \
                    migration.ACTIVE_PHASES:
                continue
            snap = self._snapshot(run)
            if snap is None:
                continue
            generated = len(snap.generated_ids)
            tokens = len(snap.prompt_ids) + generated
            elapsed = max(0.0, (now_ms() - run.started_ms) / 1000) if run.started_ms else 0.0
            dests = self._destinations(run, reports, inventories)  # none: it can only be waited for
            out[aid] = (run, RunningInference(
                instance=aid, model=run.model, tokens=tokens,
                remaining_s=remaining_s(generated, run.max_tokens, elapsed,
                                        self.expected_run_s(run.namespace, run.action)),
                memory_mb=memory.get(run.url, 0), destinations=dests))
        return out

    def _snapshot(self, run: migration.RunningRun) -> ExportSnapshot | None:
        """The run's tokens so far; ``None`` when it ended or its runtime does not say."""
        try:
            resp = self.http.post(f"{run.url}{EXPORT_PATH}", json=export_body(run.activation_id, stop=False),
                                  timeout=SNAPSHOT_TIMEOUT_S)
            snap = read_reply(ExportSnapshot, EXPORT_PATH, resp.status_code, resp.json())
        except (requests.RequestException, ValueError, FaasLLMError):
            return None
        return None if snap.finished else snap

    def _destinations(self, run: migration.RunningRun, reports: Sequence[NodeReport],
                      inventories: Mapping[str, CacheInventory]) -> tuple[Destination, ...]:
        """Other nodes that could host the run: 0 s with an idle warm instance, else its load estimate."""
        action_memory = next((c.memory_mb for rep in reports for c in rep.containers if c.url == run.url), 0)
        request = PlacementRequest(run.namespace, run.action, run.model, self.model_size(run.model), action_memory)
        views = views_from_reports(request, reports, inventories, boot_s=self.boot_s())
        dests = []
        for v in views:
            if v.node == run.node or v.draining:
                continue
            if v.warm_idle > 0:
                dests.append(Destination(v.node, 0.0))
            elif v.can_start(request.memory_mb):
                dests.append(Destination(v.node, load_estimate(request, v)[0]))
        return tuple(dests)
