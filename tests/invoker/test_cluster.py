"""Integration: two invoker processes as two nodes, real Redis, real runtimes with the tiny model.

The cluster is module-scoped (runtimes import torch: seconds each) on its own Redis database,
so the per-test flush of database 0 does not touch it; each test uses its own actions.
The kill -9 test runs last: it kills a node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from faas_llm.errors import ActivationStatus
from faas_llm.redis_server import RedisServer
from faas_llm.settings import Settings
from faas_llm.types import LoadTier
from tests.invoker.cluster_harness import Cluster, annotation, link_models, wait_for

pytestmark = pytest.mark.slow
DB = 7


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("invoker-cluster")
    link_models(root / "registry", tiny_model_dir, ["tiny", "tiny-x", "tiny-y"])
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    base = Settings(
        redis_url=url, data_dir=root / "data", registry_url=f"file://{root / 'registry'}", prewarm_count=1,
        max_containers=3, heartbeat_interval_s=0.2, node_ttl_s=1.5, claim_idle_ms=1500, runtime_drain_s=1.0,
        runtime_threads=4, runtime_torch_threads=1, log_level="INFO",
    )
    c = Cluster(base, ["node-a", "node-b"], root)
    try:
        yield c
    finally:
        c.close()
        redis.Redis.from_url(url).flushdb()


def test_warm_reuse_then_scale_to_zero_after_keep_alive(cluster: Cluster) -> None:
    cluster.put_action("warm", keep_alive=2.0)
    first = cluster.result(cluster.invoke("warm"))
    assert first.response.success, first.response
    assert first.coldStart and first.loadTier is LoadTier.REGISTRY and first.loadTime is not None
    assert isinstance(annotation(first, "initTime"), int) and annotation(first, "waitTime") >= 0
    assert first.response.result["usage"]["completion_tokens"] == 4
    assert any("XXX_THE_END" not in line for line in first.logs) or first.logs == []
    second = cluster.result(cluster.invoke("warm"))
    assert second.response.success
    assert not second.coldStart and second.loadTier is LoadTier.WARM and annotation(second, "initTime") is None
    assert second.node == first.node
    assert second.response.result["text"] == first.response.result["text"]  # greedy: same answer
    # one container served both, and after the keep-alive it is gone (scale to zero)
    assert len(cluster.containers_of("warm")) == 1
    wait_for("scale to zero", lambda: not cluster.containers_of("warm"), timeout_s=20)


def test_cold_start_goes_where_the_checkpoint_is_closest(cluster: Cluster) -> None:
    # tiny-x: DRAM on node-b, SSD on node-a -> node-b; tiny-y: SSD on node-b, nothing on node-a -> node-b
    # (with no inventories the tie would go to node-a, the first id)
    cluster.publish_inventory("node-a", dram=[], ssd=["tiny-x"])
    cluster.publish_inventory("node-b", dram=["tiny-x"], ssd=["tiny-y"])
    cluster.put_action("near", model="tiny-x", keep_alive=1.0)
    cluster.put_action("mid", model="tiny-y", keep_alive=1.0)
    near, mid = cluster.invoke("near"), cluster.invoke("mid")
    for aid in (near, mid):
        rec = cluster.result(aid)
        assert rec.response.success and rec.coldStart and rec.node == "node-b", rec


def test_an_action_whose_model_cannot_load_fails_clearly(cluster: Cluster) -> None:
    cluster.put_action("ghost", model="no-such-model", keep_alive=1.0)
    rec = cluster.result(cluster.invoke("ghost"))
    assert rec.response.status == "action developer error"
    assert "no-such-model" in rec.response.result["error"]
    wait_for("the failed container to go", lambda: not cluster.containers_of("ghost"), timeout_s=10)


def test_max_instances_respected_under_a_burst(cluster: Cluster) -> None:
    cluster.put_action("burst", max_instances=2, keep_alive=1.0)
    aids = [cluster.invoke("burst", {"prompt": "hi", "max_tokens": 8, "temperature": 0}) for _ in range(6)]
    peak = [0]

    def all_done() -> bool:
        peak[0] = max(peak[0], len(cluster.containers_of("burst")))
        return all(cluster.store.get(a) is not None for a in aids)

    wait_for("the burst to finish", all_done, timeout_s=120, every_s=0.05)
    records = [cluster.result(a) for a in aids]
    assert all(r.response.success for r in records), [r.response for r in records]
    assert 1 <= peak[0] <= 2
    assert 1 <= sum(r.coldStart for r in records) <= 2


def test_one_warm_container_batches_up_to_its_concurrency(cluster: Cluster) -> None:
    """limits.concurrency 4: the invoker sends four runs into the one warm container (no second one is
    started: the autoscaler's target is the container's concurrency) and the runtime decodes them
    together; each record says how many runs it shared the steps with."""
    cluster.put_action("batched", concurrency=4, max_instances=4, keep_alive=10.0)
    assert cluster.result(cluster.invoke("batched")).response.success  # the container, warm
    aids = [cluster.invoke("batched", {"prompt": f"batch {i}", "max_tokens": 400, "temperature": 0}) for i in range(4)]
    records = [cluster.result(a) for a in aids]
    assert all(r.response.success and not r.coldStart for r in records), [r.response for r in records]
    assert len({r.node for r in records}) == 1 and len(cluster.containers_of("batched")) == 1
    shared = [annotation(r, "batchSize") for r in records]
    assert all(s is not None for s in shared) and max(s["max"] for s in shared) >= 2, shared


def test_streamed_tokens_reach_the_token_stream(cluster: Cluster) -> None:
    cluster.put_action("streamer", keep_alive=1.0)
    aid = cluster.invoke("streamer", {"prompt": "hello", "max_tokens": 5, "temperature": 0}, stream=True)
    record = cluster.result(aid)
    assert record.response.success, record.response
    chunks = list(cluster.store.iter_tokens(aid, timeout_s=5))
    assert chunks[-1].done and chunks[-1].data["finish_reason"] in ("length", "stop")
    ids = [i for c in chunks[:-1] for i in c.data["token_ids"]]
    assert ids == record.response.result["token_ids"]
    assert "".join(c.data["text"] for c in chunks[:-1]) == record.response.result["text"]
    assert record.timeToFirstToken is not None and record.timeToFirstToken > 0


CRASHY = """
import os

def main(args):
    print("about to run", flush=True)
    if args.get("crash"):
        os._exit(3)
    return llm.generate(prompt="hi", max_tokens=2, temperature=0)
"""


def test_container_crash_is_a_developer_error_and_the_container_is_replaced(cluster: Cluster) -> None:
    cluster.put_action("crashy", code=CRASHY, keep_alive=5.0)
    ok = cluster.result(cluster.invoke("crashy", {}))
    assert ok.response.success, ok.response
    assert any("stdout: about to run" in line for line in ok.logs), ok.logs
    before = {c.id for _, c in cluster.containers_of("crashy")}
    crashed = cluster.result(cluster.invoke("crashy", {"crash": True}))
    assert crashed.response.status == "action developer error"
    assert crashed.response.statusCode == int(ActivationStatus.DEVELOPER_ERROR)
    wait_for("a replacement container", lambda: {c.id for _, c in cluster.containers_of("crashy")} - before, 30)
    again = cluster.result(cluster.invoke("crashy", {}))
    assert again.response.success and again.coldStart


SLOW = """
import time

def main(args):
    time.sleep(args.get("sleep", 0))
    return {"slept": args.get("sleep", 0)}
"""


def test_kill_9_of_an_invoker_mid_run_completes_once(cluster: Cluster) -> None:
    cluster.put_action("slow", code=SLOW, keep_alive=30.0)
    aid = cluster.invoke("slow", {"sleep": 3}, timeout_ms=120_000)
    busy = wait_for("the run to start", lambda: [n for n, c in cluster.containers_of("slow") if c.active], 90)
    victim = busy[0]
    cluster.kill(victim)
    record = cluster.result(aid, timeout_s=120)
    assert record.response.success, record.response
    assert record.node != victim and record.response.result == {"slept": 3}
    assert [r.activationId for r in cluster.store.query("guest", name="slow")] == [aid]
