"""Migration-aware placement (ServerlessLLM's), end to end: two real invoker nodes with one container
slot each, a real Celery worker running the migration, real runtimes with the tiny model, real Redis.

A long greedy generation runs on the source node; a request for another action arrives whose model
is in DRAM only there (the published cache inventory), and the other node would have to fetch it
from a slow registry. The scheduler plans with faas_llm.migration_policy, migrates the running
generation to the other node (its container's slot counted by a lease), and starts the new action in
the slot the hand-off freed, while the migrated generation is still running. Both outputs equal
unmigrated runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from faas_llm.migration import RESUMED, running
from faas_llm.redis_server import RedisServer
from faas_llm.registry import FileRegistry
from faas_llm.registry.push import push_model
from faas_llm.settings import Settings
from faas_llm.types import CacheInventory, TierInventory
from tests.celery.conftest import WorkerProcess
from tests.invoker.cluster_harness import Cluster, annotation, wait_for

pytestmark = pytest.mark.slow
DB = 11
LONG = {"prompt": "the quick brown fox", "max_tokens": 1500, "temperature": 0}
SHORT = {"prompt": "the quick brown fox", "max_tokens": 48, "temperature": 0}
START = '{{"id": "s-{node}", "namespace": "guest", "action": "long"}}'
GB = 1_000_000_000


def publish(cluster: Cluster, node: str, dram: list[str]) -> None:
    """The node's cache inventory: these models in DRAM; a slow registry (50 kB/s) for the rest."""
    inv = CacheInventory(node=node, dram=TierInventory(models=dram, read_bandwidth=20 * GB),
                         ssd=TierInventory(models=[], read_bandwidth=2 * GB), registry_bandwidth=50_000.0)
    cluster.r.set(cluster.keys.node_cache(node), inv.model_dump_json(), ex=300)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, redis_server: RedisServer, small_model_dir: Path,
            tmp_path: Path) -> Iterator[Cluster]:
    # the small model (~4 ms a token): the long run lasts ~7 s, so moving it pays (the tiny model's 1500 tokens
    # take ~0.5 s: the scheduler rightly waits for it instead)
    registry = FileRegistry(tmp_path / "registry")
    push_model(registry, small_model_dir, "tiny-long", work_dir=tmp_path / "p1")
    push_model(registry, small_model_dir, "tiny-y", work_dir=tmp_path / "p2")
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    base = Settings(
        redis_url=url, data_dir=tmp_path / "data", registry_url=f"file://{tmp_path / 'registry'}", prewarm_count=0,
        max_containers=1, heartbeat_interval_s=0.2, node_ttl_s=1.5, claim_idle_ms=3000, runtime_drain_s=1.0,
        runtime_threads=4, runtime_torch_threads=1, log_level="INFO", migration_gap_tokens=8,
        celery_pool="solo", celery_tick_s=3600.0, **getattr(request, "param", {}),
    )
    c = Cluster(base, ["node-a", "node-b"], tmp_path)
    try:
        c.put_action("long", model="tiny-long", keep_alive=600.0)
        c.put_action("other", model="tiny-y", keep_alive=600.0)
        for node in ("node-a", "node-b"):
            c.r.xadd(c.keys.node_starts(node), {"request": START.format(node=node)})
        wait_for("a warm container of 'long' on both nodes", lambda: {
            n for n, ci in c.containers_of("long") if ci.state.value == "idle"} == {"node-a", "node-b"}, 90)
        yield c
    finally:
        c.close()
        redis.Redis.from_url(url).flushdb()


def test_a_running_generation_moves_so_a_waiting_cold_start_gets_its_slot(cluster: Cluster, tmp_path: Path) -> None:
    worker = WorkerProcess(cluster.settings_of("node-a"), tmp_path / "worker.log").wait_ready()
    try:
        victim = cluster.invoke("long", LONG)
        source = wait_for("the long run to start", lambda: running(cluster.r, cluster.keys, victim), 30, 0.002).node
        dest = "node-b" if source == "node-a" else "node-a"
        # the new action's model is in DRAM only where the long run is; the other node holds only 'long'
        publish(cluster, source, ["tiny-long", "tiny-y"])
        publish(cluster, dest, ["tiny-long"])
        newcomer = cluster.invoke("other", SHORT)

        def resumed_on_dest() -> Any:
            run = running(cluster.r, cluster.keys, victim)
            return run is not None and run.node == dest

        wait_for("the long run to resume on the other node", resumed_on_dest, 60, 0.01)
        # the resume counts against the destination container's concurrency (a slot lease)
        wait_for("the destination container busy with the resume", lambda: any(
            n == dest and ci.active == 1 and ci.state.value == "busy" for n, ci in cluster.containers_of("long")), 10)
        # the source's slot was released at the hand-off: the newcomer starts there while the long run goes on
        wait_for("the newcomer's container on the source node", lambda: any(
            n == source for n, _ in cluster.containers_of("other")), 30, 0.05)
        assert cluster.store.get(victim) is None, "the long run ended before the newcomer could start"

        moved = cluster.result(victim)
        record = cluster.result(newcomer)
        assert moved.response.success, moved.response
        assert moved.nodes == [source, dest]
        assert annotation(moved, "migration")["from"] == source
        assert cluster.r.hget(cluster.keys.migration(victim), "phase") == RESUMED
        assert record.response.success and record.node == source, (record, worker.output()[-3000:])

        # both outputs equal unmigrated runs (the same weights: the newcomer's greedy run is a prefix)
        baseline = cluster.result(cluster.invoke("long", LONG))
        assert baseline.nodes == [baseline.node]
        assert moved.response.result["token_ids"] == baseline.response.result["token_ids"]
        assert len(baseline.response.result["token_ids"]) > 200
        short = record.response.result["token_ids"]
        assert short == baseline.response.result["token_ids"][: len(short)] and len(short) == SHORT["max_tokens"]
    finally:
        worker.stop()


@pytest.mark.parametrize("cluster", [{"migration_cost_b_s": 30.0}], indirect=True)
def test_a_run_that_ends_before_any_move_is_waited_for(cluster: Cluster, tmp_path: Path) -> None:
    """The same two nodes, but the running generation has ~0.4 s left (100 tokens) and a move costs 30 s
    (``migration_cost_b_s``): nothing migrates, and the newcomer is held for the source node's slot (its
    model in DRAM there) instead of a registry fetch on the other node (~6 h at 50 kB/s)."""
    worker = WorkerProcess(cluster.settings_of("node-a"), tmp_path / "worker.log").wait_ready()
    try:
        victim = cluster.invoke("long", {**LONG, "max_tokens": 100})
        source = wait_for("the run to start", lambda: running(cluster.r, cluster.keys, victim), 30, 0.002).node
        dest = "node-b" if source == "node-a" else "node-a"
        publish(cluster, source, ["tiny-long", "tiny-y"])
        publish(cluster, dest, ["tiny-long"])
        newcomer = cluster.invoke("other", SHORT)
        record = cluster.result(newcomer)
        moved = cluster.result(victim)
        assert moved.response.success and moved.nodes == [source], moved
        assert cluster.r.hget(cluster.keys.migration(victim), "phase") is None  # no migration was started
        assert record.response.success and record.node == source, record
        assert not any(n == dest for n, _ in cluster.containers_of("other"))
    finally:
        worker.stop()
