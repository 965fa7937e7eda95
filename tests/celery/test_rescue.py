"""The rescuer and the prefetch policy tick against real Redis and real Celery messages (no worker)."""

from __future__ import annotations

from faas_llm.jobs import FaasCelery, send_prefetch
from faas_llm.model_status import ModelStatusStore
from faas_llm.popularity import recent_counts, record_invocation
from faas_llm.types import NodeReport, now_ms
from worker.tasks.rescue import decode_message, rescue_dead_queues
from worker.tasks.tick import apply_prefetch_policy


def report(app: FaasCelery, node: str) -> None:
    rep = NodeReport(node=node, max_containers=2)
    app.redis.set(app.keys.node(node), rep.model_dump_json(), ex=30)
    app.redis.zadd(app.keys.nodes_index(), {node: rep.ts})


def test_queue_of_a_node_that_stays_dead_is_rerouted_to_a_live_node(app: FaasCelery) -> None:
    report(app, "alive")
    task = send_prefetch(app, "tiny", "dead", "ssd")
    now = now_ms()
    assert rescue_dead_queues(app, at_ms=now) == []  # absent once is not dead yet
    assert app.redis.llen("node.dead") == 1
    moved = rescue_dead_queues(app, at_ms=now + 5_000)  # absent for longer than celery_rescue_after_s (1 s)
    assert [(m["from"], m["to"], m["model"]) for m in moved] == [("dead", "alive", "tiny")]
    assert app.redis.llen("node.dead") == 0
    [raw] = app.redis.lrange("node.alive", 0, -1)
    rerouted = decode_message(raw)
    assert rerouted.kwargs["node"] == "alive" and rerouted.kwargs["tier"] == "ssd" and rerouted.task_id != task
    status = ModelStatusStore(app.redis, app.keys).get("tiny")
    assert status["dead"].state == "rerouted" and status["alive"].state == "queued"


def test_live_node_queue_is_left_alone(app: FaasCelery) -> None:
    report(app, "alive")
    send_prefetch(app, "tiny", "alive", "dram")
    assert rescue_dead_queues(app, at_ms=now_ms() + 60_000) == []
    assert app.redis.llen("node.alive") == 1


def test_policy_tick_prefetches_popular_models_onto_live_nodes(app: FaasCelery) -> None:
    report(app, "n1")
    report(app, "n2")
    for _ in range(5):
        record_invocation(app.redis, app.keys, "hot", 900)
    record_invocation(app.redis, app.keys, "once", 900)
    assert recent_counts(app.redis, app.keys, 900) == {"hot": 5, "once": 1}
    plan = apply_prefetch_policy(app)
    assert [(p.model, p.tier) for p in plan.prefetches] == [("hot", "dram")] and plan.cold == ("once",)
    queued = [decode_message(m).kwargs for q in ("node.n1", "node.n2") for m in app.redis.lrange(q, 0, -1)]
    assert queued == [{"model": "hot", "node": "n1", "tier": "dram", "version": None}]
    apply_prefetch_policy(app)  # a second tick does not queue it again while it is pending
    assert app.redis.llen("node.n1") == 1
