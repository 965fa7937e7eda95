"""Pure parts: the Celery configuration, the prefetch policy, the rescuer's message decoding."""

from __future__ import annotations

import base64
import json

import pytest

from faas_llm.errors import ConfigError
from faas_llm.jobs import DEFAULT_QUEUE, celery_config
from faas_llm.prefetch_policy import NodeCache, PolicyConfig, Prefetch, plan_prefetch, replicas_wanted
from faas_llm.settings import Settings
from worker.celery_app import worker_argv
from worker.tasks.rescue import decode_message


def test_celery_config_is_json_only_acks_late_and_restores_promptly() -> None:
    settings = Settings(redis_url="redis://h:1/3", celery_visibility_timeout_s=120, celery_restore_interval_s=2.0)
    conf = celery_config(settings)
    assert conf["broker_url"] == conf["result_backend"] == "redis://h:1/3"
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    opts = conf["broker_transport_options"]
    assert opts["visibility_timeout"] == 120 and opts["unacked_restore_interval"] == 2.0
    assert opts["unacked_restore_throttle"] == 1


def test_worker_listens_on_its_node_queue_and_the_default_one() -> None:
    argv = worker_argv(Settings(node_id="n7", celery_pool="solo"), ["--foo"])
    assert argv[argv.index("-Q") + 1] == f"node.n7,{DEFAULT_QUEUE}"
    assert argv[argv.index("-P") + 1] == "solo" and argv[-1] == "--foo"


def test_replicas_follow_popularity_within_bounds() -> None:
    cfg = PolicyConfig(max_replicas=3, invocations_per_replica=10, min_invocations=2)
    assert replicas_wanted(0, 0, cfg, 5) == 0
    assert replicas_wanted(1, 0, cfg, 5) == 0  # cold
    assert replicas_wanted(2, 0, cfg, 5) == 1
    assert replicas_wanted(25, 0, cfg, 5) == 3
    assert replicas_wanted(1000, 0, cfg, 5) == 3  # capped
    assert replicas_wanted(1000, 0, cfg, 2) == 2  # no more than the nodes
    assert replicas_wanted(0, 4, cfg, 5) == 4  # pinned by min_instances
    with pytest.raises(ConfigError):
        PolicyConfig(invocations_per_replica=0)


def test_plan_places_popular_models_on_more_nodes_and_lets_cold_ones_go() -> None:
    cfg = PolicyConfig(max_replicas=3, invocations_per_replica=10, min_invocations=2, dram_models=1)
    nodes = [
        NodeCache("a", dram=frozenset({"hot"}), dram_free_bytes=100, ssd_free_bytes=100),
        NodeCache("b", ssd=frozenset({"hot"}), dram_free_bytes=10, ssd_free_bytes=100),
        NodeCache("c", dram_free_bytes=50, ssd_free_bytes=500),
    ]
    plan = plan_prefetch({"hot": 30, "warm": 3, "cold": 1}, nodes, cfg)
    assert plan.kept == {"hot": ("dram", 3), "warm": ("ssd", 1)}
    assert plan.cold == ("cold",)
    # hot: a holds it; b first (its SSD copy makes a cheap DRAM fill), then c
    # warm: on SSD of the node with the most free SSD
    assert plan.prefetches == (Prefetch("hot", "b", "dram"), Prefetch("hot", "c", "dram"), Prefetch("warm", "c", "ssd"))
    # nothing to do once the placement is reached
    done = [NodeCache(n.node, dram=frozenset({"hot"}), ssd=frozenset({"warm"})) for n in nodes]
    assert plan_prefetch({"hot": 30, "warm": 3, "cold": 1}, done, cfg).prefetches == ()


def test_pinned_models_go_to_dram_even_without_traffic() -> None:
    plan = plan_prefetch({}, [NodeCache("a"), NodeCache("b")], PolicyConfig(dram_models=0), pinned={"svc": 1})
    assert plan.prefetches == (Prefetch("svc", "a", "dram"),)


def test_decode_message_reads_a_kombu_protocol_2_message() -> None:
    body = base64.b64encode(json.dumps([[], {"model": "m", "node": "n"}, {}]).encode()).decode()
    raw = json.dumps({"body": body, "content-type": "application/json", "headers": {"task": "t", "id": "i"},
                      "properties": {"body_encoding": "base64"}})
    task = decode_message(raw)
    assert (task.name, task.task_id, task.kwargs) == ("t", "i", {"model": "m", "node": "n"})
    with pytest.raises(ValueError):
        decode_message(json.dumps({"body": "x", "content-type": "application/x-python-serialize", "headers": {}}))


def test_remaining_time_follows_the_pace_so_far_else_the_usual_run_time() -> None:
    from faas_llm.migration_policy import remaining_s

    assert remaining_s(generated=100, max_tokens=500, elapsed_s=2.0, expected_run_s=9.0) == pytest.approx(8.0)
    assert remaining_s(generated=500, max_tokens=500, elapsed_s=2.0, expected_run_s=9.0) == 0.0
    assert remaining_s(generated=0, max_tokens=500, elapsed_s=2.0, expected_run_s=9.0) == 7.0  # no pace yet
    assert remaining_s(generated=10, max_tokens=0, elapsed_s=12.0, expected_run_s=9.0) == 0.0


def test_full_nodes_sooner_than_the_baseline_are_the_migration_candidates() -> None:
    from faas_llm.migration_policy import full_nodes_sooner

    loads = [("a", 1.0, False), ("b", 0.5, True), ("c", 3.0, False), ("d", 0.8, False), ("e", 9.0, False)]
    assert full_nodes_sooner(loads, baseline_s=5.0) == [("d", 0.8), ("a", 1.0), ("c", 3.0)]
    assert full_nodes_sooner(loads, baseline_s=0.5) == []
