"""The invoker's run-time history and the tail-aware warm-wait estimate in the placement's views.

Pure parts (run_seconds, elapsed_by_container, book_warm / idle_as_busy with spreads) and, against a
real Redis (no runtimes), the path the invoker takes: stored activation records -> the buffer ->
Redis -> the scheduler's views, with busy-since from the running-run registry.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import redis

from faas_llm import migration
from faas_llm.errors import ActivationStatus
from faas_llm.keys import Keys
from faas_llm.placement import NodeView, PlacementRequest, make_policy, views_from_reports
from faas_llm.settings import Settings
from faas_llm.types import ContainerInfo, ContainerState, Invocation, LoadTier, NodeReport, new_activation_id, now_ms
from invoker.cluster import ActionDefinitions, publish_report, read_reports
from invoker.records import RunFacts, build_record, failure_record
from invoker.run_times import (
    SAMPLES,
    RecordingStore,
    RunTimeBuffer,
    elapsed_by_container,
    idle_nodes,
    read_distribution,
    reports_with_runs,
    run_seconds,
    runs_by_container,
    with_registered_runs,
)
from invoker.scheduler import Scheduler, book_warm, idle_as_busy

GB = 1_000_000_000


def _inv(action: str = "chat") -> Invocation:
    aid = new_activation_id()
    return Invocation(activation_id=aid, namespace="guest", action=action, subject="guest", transaction_id=aid,
                      deadline_ms=now_ms() + 60_000)


def _record(seconds: float, *, cold: bool = False, action: str = "chat") -> Any:
    start = now_ms() - int(seconds * 1000)
    return build_record(_inv(action), RunFacts(start_ms=start, end_ms=start + int(seconds * 1000),
                                               status=ActivationStatus.SUCCESS, result={}, node="n1", cold_start=cold))


def _run(container: str, started_ms: int, action: str = "chat") -> migration.RunningRun:
    return migration.RunningRun(activation_id=new_activation_id(), node="n1", container=container, url="http://x",
                                namespace="guest", action=action, model="tiny", deadline_ms=now_ms() + 60_000,
                                started_ms=started_ms)


def test_only_warm_runs_that_ran_count() -> None:
    assert run_seconds(_record(2.5)) == 2.5
    assert run_seconds(_record(2.5, cold=True)) is None  # includes the model load
    assert run_seconds(failure_record(_inv(), ActivationStatus.DEVELOPER_ERROR, "x", "n1", now_ms())) is None


def test_elapsed_by_container_groups_the_actions_runs() -> None:
    now = 100_000
    runs = [_run("c1", now - 4000), _run("c1", now - 1000), _run("c2", now - 500), _run("c3", now - 9000, "other"),
            _run("c4", 0), None]
    assert elapsed_by_container(runs, "guest", "chat", now) == {"c1": [4.0, 1.0], "c2": [0.5]}


def test_book_warm_and_idle_as_busy_keep_the_spread_aligned() -> None:
    v = NodeView("n1", free_slots=0, warm_idle=1, warm_busy_free_s=(5.0, 2.0), warm_busy_sd_s=(1.0, 3.0))
    # an idle instance becomes busy for one run (its spread: the run's)
    got = idle_as_busy(v, 1.5, 0.5)
    assert got.warm_idle == 0 and got.warm_busy_free_s == (2.0, 5.0, 1.5) and got.warm_busy_sd_s == (3.0, 1.0, 0.5)
    # waiting on the soonest busy one books a run after it: expectations add, variances add
    (booked,) = book_warm([dataclasses.replace(v, warm_idle=0)], "n1", 1.5, 4.0)
    assert booked.warm_busy_free_s == (3.5, 5.0) and booked.warm_busy_sd_s == pytest.approx((5.0, 1.0))
    # without a known spread (no history) the views carry none, as before
    plain = NodeView("n1", free_slots=0, warm_idle=1, warm_busy_free_s=(5.0,))
    assert idle_as_busy(plain, 1.5).warm_busy_sd_s == () and book_warm([plain], "n1", 1.5)[0].warm_busy_sd_s == ()
    assert book_warm([plain], "n1", 1.5)[0].warm_busy_free_s == (5.0, 1.5)


def test_the_buffer_keeps_the_most_recent_samples_per_action(redis_client: redis.Redis, keys: Keys) -> None:
    buf = RunTimeBuffer(keys, cap=4)
    for x in range(6):
        buf.observe("guest", "chat", float(x))
    assert buf.flush(redis_client) == 4 and buf.flush(redis_client) == 0
    buf.observe("guest", "chat", 9.0)
    buf.flush(redis_client)
    assert redis_client.lrange(keys.action_run_times("guest", "chat"), 0, -1) == ["9.0000", "5.0000", "4.0000",
                                                                                  "3.0000"]
    assert SAMPLES >= 100


def test_the_schedulers_view_carries_the_tail_aware_estimate(redis_client: redis.Redis, keys: Keys,
                                                             settings: Settings) -> None:
    """Completed runs stored through the invoker's store reach Redis; a busy instance whose run has lasted
    5 s (in the running-run registry) is then expected free after E[R - 5 | R > 5] = 25 s, not the mean
    run time, and the locality policy starts a load (5 s) instead of waiting for it."""
    r: Any = redis_client
    buf = RunTimeBuffer(keys)
    store = RecordingStore(r, keys, 3600, buf)
    for seconds in [1.0] * 9 + [30.0]:
        assert store.complete(_record(seconds))
    store.complete(_record(50.0, cold=True))  # a cold start: not counted
    store.complete(_record(1.0, action="other"))
    buf.flush(r)

    migration.register_run(r, keys, _run("busy-1", now_ms() - 5000))
    publish_report(r, keys, NodeReport(node="n1", max_containers=2, memory_mb=8192, free_memory_mb=8192, containers=[
        ContainerInfo(id="busy-1", state=ContainerState.BUSY, namespace="guest", action="chat", model="tiny",
                      active=1, concurrency=1)]), ttl_s=30)

    def fail(ns: str, name: str, status: ActivationStatus, message: str, limit: int) -> int:
        raise AssertionError("unexpected")

    scheduler = Scheduler(settings, r, keys, ActionDefinitions(r, keys, ttl_s=0), make_policy("locality"), "me",
                          lambda ns, a: 1.0, fail)
    request = PlacementRequest("guest", "chat", "tiny", GB)  # a registry load: 5 s at the default bandwidth
    dist = read_distribution(r, keys, "guest", "chat")
    assert dist is not None and sorted(dist.sorted) == [1.0] * 9 + [30.0]
    (view,), run_s, run_sd = scheduler.views(request, read_reports(r, keys), {})
    assert run_s == pytest.approx(3.9) and run_sd == pytest.approx(math.sqrt(dist.variance))
    (expected,) = view.warm_busy_free_s
    assert 24.0 < expected <= 25.0  # 30 - elapsed (a little over 5 s by now)
    assert view.warm_busy_sd_s == (0.0,)
    decision = make_policy("locality").choose(request, [view])
    assert decision is not None and decision.tier is LoadTier.REGISTRY

    # no history for the action: the plain estimate (expected_run_s, 1 s), no spread: it waits
    r.delete(keys.action_run_times("guest", "chat"))
    (plain,), run_s, run_sd = scheduler.views(request, read_reports(r, keys), {})
    assert plain.warm_busy_free_s == (1.0,) and plain.warm_busy_sd_s == () and run_sd is None
    assert make_policy("locality").choose(request, [plain]) == make_policy("locality").choose(
        request, [NodeView("n1", free_slots=2, warm_busy_free_s=(1.0,))])
    decision = make_policy("locality").choose(request, [plain])
    assert decision is not None and decision.waits_for_warm


def _report(node: str, *containers: ContainerInfo) -> NodeReport:
    return NodeReport(node=node, max_containers=1, memory_mb=8192, free_memory_mb=8192, containers=list(containers))


def _container(cid: str, state: ContainerState, active: int = 0, action: str = "long") -> ContainerInfo:
    return ContainerInfo(id=cid, state=state, namespace="guest", action=action, model="tiny", active=active,
                         concurrency=1)


def test_runs_by_container_counts_live_runs() -> None:
    now = now_ms()
    late = _run("c2", now - 1000).model_copy(update={"deadline_ms": now - 1})
    assert runs_by_container([_run("c1", now), _run("c1", now), late, None, _run("c3", now, "other")], now) == {
        "c1": 2, "c3": 1}


def test_reports_with_runs_raise_a_stale_idle_container_to_busy() -> None:
    """A run that began since the last heartbeat: the report shows the container idle, the registry busy."""
    stale = _report("a", _container("c1", ContainerState.IDLE))
    other = _report("b", _container("c2", ContainerState.IDLE))
    starting = _report("c", _container("c3", ContainerState.STARTING))
    fixed = reports_with_runs([stale, other, starting], {"c1": 1, "c3": 1})
    assert fixed[0].containers[0].state is ContainerState.BUSY and fixed[0].containers[0].active == 1
    assert fixed[1] is other and fixed[2] is starting  # nothing registered / not a running state: unchanged
    busy = _report("d", _container("c4", ContainerState.BUSY, active=2))
    assert reports_with_runs([busy], {"c4": 1})[0] is busy  # only raises
    assert idle_nodes([stale, other, starting, busy]) == ["a", "b"]
    # the placement's view of another action: the stale node offered a free (evictable) slot, the fixed one none
    request = PlacementRequest("guest", "newcomer", "tiny", GB)
    (before,), (after,) = views_from_reports(request, [stale], {}), views_from_reports(request, fixed[:1], {})
    assert before.free_slots == 1 and after.free_slots == 0


def test_with_registered_runs_reads_the_registry(redis_client: redis.Redis, keys: Keys) -> None:
    r: Any = redis_client
    reports = [_report("n1", _container("c1", ContainerState.IDLE)),
               _report("n2", _container("c9", ContainerState.BUSY, 1))]
    assert with_registered_runs(r, keys, reports, now_ms()) == reports  # nothing registered
    migration.register_run(r, keys, _run("c1", now_ms()))  # _run registers on node n1
    fixed = with_registered_runs(r, keys, reports, now_ms())
    assert fixed[0].containers[0].state is ContainerState.BUSY and fixed[1] is reports[1]
