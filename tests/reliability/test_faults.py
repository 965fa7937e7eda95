"""Faults against a real ``faas-llm up`` cluster, each mid-invocation, counting accepted invocations
against activation records: every accepted invocation ends with exactly one record (a success or a
clear error), no duplicate, and the cluster serves again with no manual step.

Order matters only in that the last test takes a node away for good.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest

from faas_llm.model_status import ModelStatusStore
from faas_llm.settings import Settings, child_environ
from faas_llm.types import ContainerState, NodeReport
from tests.reliability.harness import (
    SLOW_GEN,
    Ledger,
    RelCluster,
    describe,
    failed,
    kill9,
    kill9_group,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_kill9_of_an_action_runtime_mid_invocation(rel: RelCluster) -> None:
    rel.put_action("rt-victim", code=SLOW_GEN, limits={"timeout": 60_000})
    ledger = Ledger()
    victim = rel.invoke("rt-victim", {"sleep": 30, "max_tokens": 4}, ledger)
    assert victim is not None
    runtime = rel.busy_runtime(victim)
    for i in range(3):  # queued behind the victim
        rel.invoke("rt-victim", {"sleep": 0, "prompt": f"after {i}"}, ledger)
    kill9_group(runtime)
    records = ledger.settle(rel.store)
    assert len(records) == 4, describe(records)
    dead = records[victim]
    assert dead.response.status == "action developer error", dead.response
    assert "error" in (dead.response.result or {})
    assert not failed({a: r for a, r in records.items() if a != victim}), describe(records)
    rel.serves()


def test_kill9_of_the_invoker_mid_stream_never_repeats_text(rel: RelCluster) -> None:
    """The client's stream (OpenAI SSE through the gateway) is the whole answer exactly once,
    although the invoker died mid-stream and the run was re-done by the restarted invoker."""
    rel.put_action("streamer")
    rel.serves("streamer")  # a warm container, so the stream starts at once
    invoker = rel.service("invoker")
    body = {"model": "streamer", "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0.9,
            "stream": True}
    texts: list[str] = []
    finish: list[str | None] = []
    killed = threading.Event()
    with rel.http.post(f"{rel.apihost}/v1/completions", json=body, stream=True, timeout=180) as reply:
        assert reply.status_code == 200, reply.text
        aid = reply.headers["x-openwhisk-activation-id"]
        for line in reply.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            assert "error" not in event, event
            choice = event["choices"][0]
            texts.append(choice["text"])
            finish.append(choice.get("finish_reason"))
            if "".join(texts) and not killed.is_set():
                kill9(invoker)
                killed.set()
    assert killed.is_set()
    record = rel.store.wait(aid, 60)
    assert record is not None and record.response.success, record
    result: dict[str, Any] = record.response.result or {}
    assert "".join(texts) == result["text"], "the client's stream is not the answer exactly once"
    assert finish[-1] in ("length", "stop")
    rel.wait_restarted("invoker", invoker.pid)
    # the run really was cut and re-done, after some text had reached the client
    log = (rel.data_dir / "logs" / "invoker.log").read_text(errors="replace")
    assert f"re-running streamed {aid}" in log
    rel.serves()


def test_kill9_of_the_cache_agent_mid_invocation(rel: RelCluster) -> None:
    rel.put_action("agent-victim", code=SLOW_GEN)
    rel.serves("agent-victim")
    agent = rel.service("cache-agent")
    ledger = Ledger()
    running = rel.invoke("agent-victim", {"sleep": 3}, ledger)
    assert running is not None
    rel.busy_runtime(running)
    rel.put_action("agent-cold")  # a cold start that needs the agent while it is gone
    kill9(agent)
    for i in range(2):
        rel.invoke("agent-cold", {"prompt": f"cold {i}", "max_tokens": 2}, ledger)
    rel.wait_restarted("cache-agent", agent.pid)
    records = ledger.settle(rel.store)
    assert records[running].response.success, records[running].response  # its model was mapped already
    for record in records.values():  # the cold ones: served (agent back, or a direct read), or a clear error
        assert record.response.success or (record.response.result or {}).get("error"), record.response
    rel.put_action("agent-after")
    rel.serves("agent-after")  # a new cold start through the restarted agent


def test_kill9_of_the_celery_worker_mid_task(rel: RelCluster) -> None:
    agent = rel.service("cache-agent")
    worker = rel.service("worker")
    status = ModelStatusStore(rel.r, rel.store.keys)
    # the prefetch policy (every tick, after the earlier tests' invocations) may have sent a prefetch of
    # the model: it would take the worker's one slot and hang on the stopped agent before ours starts
    wait_for("the worker to be idle", lambda: not any(s.state in ("queued", "running")
                                                      for s in status.get("tiny").values()), 60)
    agent.send_signal(signal.SIGSTOP)  # the prefetch now hangs inside the worker, mid-task
    try:
        out = rel.up.cli.ok("model", "prefetch", "tiny", "--node", "node0", "--tier", "ssd", "--json").json()
        task_id = out[0]["task_id"]
        wait_for("the prefetch to start", lambda: (s := status.get("tiny").get("node0")) and
                 s.task_id == task_id and s.state == "running", 60)
        for proc in [worker, *worker.children(recursive=True)]:
            kill9(proc)
    finally:
        agent.send_signal(signal.SIGCONT)
    rel.wait_restarted("worker", worker.pid)
    done = wait_for("the prefetch to be redelivered and done", lambda: (s := status.get("tiny").get("node0")) and
                    s.task_id == task_id and s.state == "done" and s, 90, every_s=0.5)
    assert done.attempts >= 2  # it ran again after the kill; the status is one entry, done once
    rel.serves()


def test_redis_restart_with_aof_while_invocations_are_queued(rel: RelCluster) -> None:
    rel.put_action("queued", code=SLOW_GEN)
    rel.serves("queued")
    ledger = Ledger()
    for i in range(12):
        rel.invoke("queued", {"sleep": 0.3, "prompt": f"queued {i}"}, ledger)
    assert len(ledger.accepted) == 12
    backlog = rel.r.xlen(rel.store.keys.action_queue("guest", "queued"))
    rel.redis.stop()  # SIGTERM: Redis writes its AOF and exits
    time.sleep(1.0)
    rel.redis.start()
    records = ledger.settle(rel.store, timeout_s=150)
    assert backlog > 0, "nothing was queued when Redis went down"
    assert not failed(records), failed(records)
    rel.serves()


def test_a_node_that_disappears_for_good(rel: RelCluster) -> None:
    """A second invoker node joins, takes work, and is killed for good: its work completes on node0.

    Robust to a slow machine without proving less: node1 is ready (reporting, with a prewarmed
    runtime) before the work arrives, and the action's time limit (5 min, from acceptance) outlasts
    slow cold starts, so a record that is not a success is a real failure, not a queue timeout."""
    base = Settings(redis_url=rel.redis.url, data_dir=rel.data_dir, node_id="node1", heartbeat_interval_s=0.5,
                    node_ttl_s=3, claim_idle_ms=3000, prewarm_count=1, runtime_torch_threads=1, runtime_drain_s=1,
                    registry_url=f"file://{rel.data_dir / 'registry'}", log_level="INFO")
    log = (rel.data_dir / "logs" / "node1-invoker.log").open("ab")
    node1 = subprocess.Popen([sys.executable, "-m", "invoker"], env=child_environ(base), stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()

    def node1_ready() -> bool:
        raw = rel.r.get(rel.store.keys.node("node1"))
        return bool(raw) and any(c.state == ContainerState.PREWARMED
                                 for c in NodeReport.model_validate_json(raw).containers)

    try:
        wait_for("node1 to report a prewarmed runtime", node1_ready, 120, every_s=0.25)
        rel.put_action("spread", code=SLOW_GEN, limits={"timeout": 300_000}, scaling={"max_instances": 8})
        ledger = Ledger()
        for i in range(8):
            rel.invoke("spread", {"sleep": 4, "prompt": f"spread {i}"}, ledger)
        assert len(ledger.accepted) == 8, f"refused: {ledger.refused}"

        def on_node1() -> str | None:
            for aid in ledger.accepted:
                raw = rel.r.get(rel.store.keys.activation_running(aid))
                if raw and json.loads(raw)["node"] == "node1":
                    return aid
            return None

        victim = wait_for("node1 to run one of them", on_node1, 120)
        for proc in [psutil.Process(node1.pid), *psutil.Process(node1.pid).children(recursive=True)]:
            kill9(proc)
        node1.wait(10)
        records = ledger.settle(rel.store, timeout_s=330)
        assert not failed(records), failed(records)
        assert records[victim].node == "node0", describe([records[victim]])  # cut on node1, re-run on node0
        wait_for("node1's report to expire", lambda: rel.r.get(rel.store.keys.node("node1")) is None, 30)
        rel.serves()
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait(10)
