"""A container kept for an action's ``min_instances`` must not be the pool's LRU eviction victim.

One real invoker (node-a, 2 container slots, no prewarm), real runtimes with the tiny model:
``pinned`` (min_instances=1) gets its container with no invocation; ``b`` takes the second slot;
then ``c`` needs a slot. The pool evicts the least-recently-used idle container, and ``pinned``'s
(never used since it started ahead) is the oldest. Evicting it drops ``pinned`` below its minimum
(the scheduler then starts it again, evicting someone else: churn and a cold start the minimum
exists to avoid); ``b``'s idle container is the one that may go.

Issue 12 finding (was ``xfail(strict=True)``; seen: pinned's container evicted for c, then the
scheduler restarted pinned, evicting b). Fixed: ``faas_llm.pool_policy.lru_victims`` / ``choose`` take
``min_instances`` per action and never pick a container that keeps its action at its minimum;
``invoker/pool.py`` passes each bound action's minimum.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from faas_llm.actions_store import ActionStore
from faas_llm.redis_server import RedisServer
from faas_llm.settings import Settings
from faas_llm.types import Action, Exec, Limits, Scaling
from tests.invoker.cluster_harness import Cluster, link_models, wait_for

pytestmark = pytest.mark.slow
DB = 12


@pytest.fixture(scope="module")
def node(redis_server: RedisServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("min-evict")
    link_models(root / "registry", tiny_model_dir, ["tiny"])
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    base = Settings(
        redis_url=url, data_dir=root / "data", registry_url=f"file://{root / 'registry'}", prewarm_count=0,
        max_containers=2, heartbeat_interval_s=0.2, node_ttl_s=1.5, runtime_drain_s=1.0, runtime_threads=2,
        runtime_torch_threads=1, log_level="INFO",
    )
    c = Cluster(base, ["node-a"], root)
    try:
        yield c
    finally:
        c.close()
        redis.Redis.from_url(url).flushdb()


def put(c: Cluster, name: str, **scaling: object) -> None:
    """Through the action store, as the gateway does (it registers a min_instances action's queue)."""
    def build(existing: Action | None) -> Action:
        return Action(namespace="guest", name=name, exec=Exec(kind="llm", model="tiny"),
                      limits=Limits(timeout=60_000, memory=512), scaling=Scaling(keep_alive=600.0, **scaling))

    ActionStore(c.r, c.keys).put("guest", name, build, overwrite=True)


def idle_ids(c: Cluster, action: str) -> set[str]:
    return {info.id for _node, info in c.containers_of(action) if info.state.value == "idle"}


def test_a_min_instances_container_is_not_evicted_for_another_action(node: Cluster) -> None:
    put(node, "pinned", min_instances=1)
    pinned = wait_for("pinned's min_instances container", lambda: idle_ids(node, "pinned"), timeout_s=120)
    assert len(pinned) == 1

    put(node, "b")
    b = node.result(node.invoke("b"))
    assert b.response.success, b.response
    wait_for("b idle", lambda: idle_ids(node, "b"), timeout_s=30)

    put(node, "c")
    c = node.result(node.invoke("c"))
    assert c.response.success, c.response
    # the node is full (2 slots); c's container came from evicting an idle one. It must not have been
    # the one that keeps pinned at its minimum.
    still = {info.id for _node, info in node.containers_of("pinned")}
    assert pinned <= still, (
        f"pinned's min_instances container {sorted(pinned)} was evicted (pinned now has {sorted(still)}; "
        f"b has {sorted(idle_ids(node, 'b'))})"
    )
