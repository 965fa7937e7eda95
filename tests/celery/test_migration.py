"""Live migration with the small demo model: two real invoker processes (nodes), real runtimes, real Redis,
the coordinator of faas_llm.migration, and (for drain) a real Celery worker.

A migrated generation must yield exactly the tokens of an unmigrated one; a streamed one must
reach the client as one continuous stream; a failure at any step must still give that answer.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from faas_llm.activations import ActivationStore
from faas_llm.jobs import send_drain
from faas_llm.migration import ABORTED, FAILED, FELL_BACK, RESUMED, running
from faas_llm.redis_server import RedisServer
from faas_llm.registry import FileRegistry
from faas_llm.registry.push import push_model
from faas_llm.settings import Settings
from tests.celery.conftest import WorkerProcess
from tests.invoker.cluster_harness import Cluster, annotation, wait_for
from worker.celery_app import create_celery
from worker.coordinator import Coordinator

pytestmark = pytest.mark.slow
DB = 8
MAX_TOKENS = 400
START_GEN = '{"id": "s", "namespace": "guest", "action": "gen"}'  # a start request (invoker.scheduler)
PARAMS = {"prompt": "the quick brown fox", "max_tokens": MAX_TOKENS, "temperature": 0}


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    # the small model (~4 ms a token, so 400 tokens last ~1.6 s): the tiny one makes a token in ~0.35 ms,
    # faster than a coordinator's round trip, and a run passed its stop point before the export reached it
    root = tmp_path_factory.mktemp("migration-cluster")
    push_model(FileRegistry(root / "registry"), small_model_dir, "tiny", work_dir=root / "push")
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    base = Settings(
        redis_url=url, data_dir=root / "data", registry_url=f"file://{root / 'registry'}", prewarm_count=0,
        max_containers=3, heartbeat_interval_s=0.2, node_ttl_s=1.5, claim_idle_ms=3000, runtime_drain_s=1.0,
        runtime_threads=4, runtime_torch_threads=1, log_level="INFO", migration_gap_tokens=8,
        celery_pool="solo", celery_tick_s=3600.0,
    )
    c = Cluster(base, ["node-a", "node-b"], root)
    try:
        c.put_action("gen", keep_alive=600.0)
        # one warm container on each node: invoke until both nodes have one
        c.r.xadd(c.keys.node_starts("node-a"), {"request": START_GEN})
        c.r.xadd(c.keys.node_starts("node-b"), {"request": START_GEN})
        wait_for("warm containers on both nodes", lambda: {n for n, ci in c.containers_of("gen")
                                                           if ci.state.value == "idle"} == {"node-a", "node-b"}, 90)
        yield c
    finally:
        c.close()
        redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="module")
def baseline(cluster: Cluster) -> dict[str, Any]:
    record = cluster.result(cluster.invoke("gen", PARAMS))
    assert record.response.success, record.response
    result = record.response.result
    assert len(result["token_ids"]) > 100, "the tiny model stopped too early for a migration test"
    return dict(result)


def coordinator(cluster: Cluster) -> Coordinator:
    return Coordinator(cluster.base, cluster.r, cluster.keys)


def start(cluster: Cluster, stream: bool = False) -> tuple[str, str]:
    """Invoke and wait until it runs; returns (activation id, the node it runs on)."""
    aid = cluster.invoke("gen", PARAMS, stream=stream)
    run = wait_for("the run to start", lambda: running(cluster.r, cluster.keys, aid), 30, 0.002)
    return aid, run.node


def other(node: str) -> str:
    return "node-b" if node == "node-a" else "node-a"


def runtime_pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    raise AssertionError(f"no process listens on {url}")


@pytest.mark.parametrize("stop_at", [1, 60, 150])
def test_greedy_generation_migrated_at_several_points_gives_the_same_tokens(
    cluster: Cluster, baseline: dict[str, Any], stop_at: int
) -> None:
    aid, source = start(cluster)
    out = coordinator(cluster).migrate(aid, other(source), stop_at=stop_at)
    record = cluster.result(aid)
    assert out.phase == RESUMED, out
    assert record.response.success, record.response
    assert record.response.result["token_ids"] == baseline["token_ids"]
    assert record.response.result["text"] == baseline["text"]
    assert record.nodes == [source, other(source)] and record.node == other(source)
    info = annotation(record, "migration")
    assert info["from"] == source and info["to"] == other(source) and info["rounds"] >= 1
    assert record.response.result["usage"]["resumed_tokens"] >= stop_at


def test_streamed_generation_reaches_the_client_as_one_continuous_stream(
    cluster: Cluster, baseline: dict[str, Any]
) -> None:
    aid, source = start(cluster, stream=True)
    chunks: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: chunks.extend(
        c.data for c in ActivationStore(cluster.r, cluster.keys).iter_tokens(aid, 60)))
    reader.start()
    out = coordinator(cluster).migrate(aid, other(source), stop_at=40)
    reader.join(60)
    record = cluster.result(aid)
    assert out.phase == RESUMED and record.nodes == [source, other(source)]
    assert not any(c.get("restart") for c in chunks)
    assert [c for c in chunks if c.get("done")] == [chunks[-1]] and chunks[-1]["finish_reason"] == "length"
    ids = [t for c in chunks for t in c.get("token_ids", [])]
    assert ids == baseline["token_ids"]  # nothing lost, nothing twice
    assert "".join(c.get("text", "") for c in chunks) == baseline["text"]
    assert isinstance(annotation(record, "migration")["pause_ms"], int)


def test_source_finishing_first_completes_normally(cluster: Cluster) -> None:
    aid = cluster.invoke("gen", {**PARAMS, "max_tokens": 3})
    record = cluster.result(aid)
    out = coordinator(cluster).migrate(aid, "node-b")
    assert out.phase == ABORTED and record.response.success and len(record.nodes) == 1


def test_destination_that_never_comes_up_leaves_the_run_on_the_source(
    cluster: Cluster, baseline: dict[str, Any]
) -> None:
    aid, source = start(cluster)
    slow = Coordinator(cluster.base.model_copy(update={"runtime_start_timeout_s": 0.5}), cluster.r, cluster.keys)
    out = slow.migrate(aid, "node-gone")
    record = cluster.result(aid)
    assert out.phase in (FAILED, ABORTED)
    assert record.response.result["token_ids"] == baseline["token_ids"] and record.nodes == [source]


def test_node_drain_through_celery_moves_the_run_and_empties_the_node(
    cluster: Cluster, baseline: dict[str, Any], tmp_path: Path
) -> None:
    worker = WorkerProcess(cluster.settings_of("node-b"), tmp_path / "worker.log").wait_ready()
    app = create_celery(cluster.base)
    try:
        aid, source = start(cluster)
        task = send_drain(app, source)
        outcome = app.AsyncResult(task).get(timeout=120)
        record = cluster.result(aid)
        assert outcome["empty"], (outcome, worker.output()[-3000:])
        assert record.response.result["token_ids"] == baseline["token_ids"]
        assert record.nodes == [source, other(source)]
        report = cluster.report(source)
        assert report is not None and report.draining and not report.containers
    finally:
        app.close()
        worker.stop()


# last: it kills a runtime of the module's cluster
def test_destination_dying_mid_resume_falls_back_to_the_source(
    cluster: Cluster, baseline: dict[str, Any]
) -> None:
    for node in ("node-a", "node-b"):  # undo the drain of the previous test
        cluster.r.delete(cluster.keys.node_drain(node))
        wait_for(f"{node} to take work", lambda n=node: (rep := cluster.report(n)) is not None and not rep.draining, 10)

    def warm_everywhere() -> bool:
        idle = {n for n, ci in cluster.containers_of("gen") if ci.state.value == "idle"}
        for node in {"node-a", "node-b"} - idle - {n for n, _ in cluster.containers_of("gen")}:
            cluster.r.xadd(cluster.keys.node_starts(node), {"request": START_GEN})
        return idle == {"node-a", "node-b"}

    wait_for("warm containers on both nodes again", warm_everywhere, 90, 1.0)
    aid, source = start(cluster, stream=True)
    dest = other(source)
    dest_url = next(ci.url for n, ci in cluster.containers_of("gen") if n == dest)
    assert dest_url
    pid = runtime_pid(dest_url)
    killed = threading.Event()

    def kill_when_resumed() -> None:
        wait_for("the resume on the destination",
                 lambda: (r := running(cluster.r, cluster.keys, aid)) is not None and r.node == dest, 60, 0.002)
        os.kill(pid, signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_when_resumed)
    killer.start()
    out = coordinator(cluster).migrate(aid, dest, stop_at=30)
    chunks = [c.data for c in ActivationStore(cluster.r, cluster.keys).iter_tokens(aid, 60)]
    killer.join(60)
    record = cluster.result(aid)
    assert killed.is_set() and out.phase in (RESUMED, FELL_BACK), out
    assert cluster.r.hget(cluster.keys.migration(aid), "phase") == FELL_BACK
    assert record.response.success, record.response
    assert record.response.result["token_ids"] == baseline["token_ids"]
    assert [t for c in chunks for t in c.get("token_ids", [])] == baseline["token_ids"]
    assert record.nodes[0] == source and record.nodes[-1] == source and annotation(record, "migration")["fell_back"]
