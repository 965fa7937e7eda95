"""Prefetch with real Celery workers, real cache agents and real Redis."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from faas_llm.jobs import FaasCelery, send_prefetch
from faas_llm.keys import Keys
from faas_llm.model_status import ModelStatusStore
from faas_llm.registry import FileRegistry
from faas_llm.types import CacheInventory
from tests.celery.conftest import Procs, wait_for

pytestmark = pytest.mark.slow


def inventory(app: FaasCelery, node: str) -> CacheInventory | None:
    raw = app.redis.get(Keys(app.faas_settings.key_prefix).node_cache(node))
    return CacheInventory.model_validate_json(raw) if raw else None


def test_prefetch_lands_in_the_right_tier_of_the_right_node(
    app: FaasCelery, procs: Procs, registry: FileRegistry, tiny_ckpt: Path
) -> None:
    registry.push(tiny_ckpt, "tiny")
    for node in ("na", "nb"):
        procs.agent(node)
        procs.worker(node)
    ssd_task = send_prefetch(app, "tiny", "na", "ssd")
    dram_task = send_prefetch(app, "tiny", "nb", "dram")
    ssd = app.AsyncResult(ssd_task).get(timeout=60)
    dram = app.AsyncResult(dram_task).get(timeout=60)
    assert ssd["node"] == "na" and ssd["tier"] == "ssd" and ssd["version"] == 1
    assert dram["node"] == "nb" and dram["tier"] == "dram"
    # the inventories the agents publish say so: na holds it on SSD only, nb in DRAM
    inv_a = wait_for("na's inventory", lambda: (i := inventory(app, "na")) and "tiny" in i.ssd.models and i)
    inv_b = wait_for("nb's inventory", lambda: (i := inventory(app, "nb")) and "tiny" in i.dram.models and i)
    assert "tiny" not in inv_a.dram.models
    assert inv_b.dram.models == ["tiny"]
    status = ModelStatusStore(app.redis, app.keys).get("tiny")
    assert status["na"].state == "done" and status["na"].tier == "ssd" and status["na"].attempts == 1
    assert status["nb"].state == "done" and status["nb"].tier == "dram" and status["nb"].version == 1

    # an unknown model fails clearly, and a bad name is refused before anything is queued
    task = send_prefetch(app, "no-such-model", "na", "dram")
    result = app.AsyncResult(task)
    result.get(timeout=60, propagate=False)
    assert result.failed()
    failed = ModelStatusStore(app.redis, app.keys).get("no-such-model")["na"]
    assert failed.state == "failed" and "no-such-model" in (failed.error or "")
    with pytest.raises(ValueError, match="not a valid model name"):
        send_prefetch(app, "../etc", "na", "dram")


def test_killed_worker_mid_prefetch_is_redelivered_and_completes_once(
    app: FaasCelery, procs: Procs, registry: FileRegistry, tiny_ckpt: Path
) -> None:
    registry.push(tiny_ckpt, "tiny")
    agent = procs.agent("na")
    first = procs.worker("na")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)  # the prefetch now hangs inside the worker, mid-task
    task = send_prefetch(app, "tiny", "na", "dram")
    store = ModelStatusStore(app.redis, app.keys)
    wait_for("the task to start", lambda: store.get("tiny")["na"].state == "running")
    first.kill9()
    agent.proc.send_signal(signal.SIGCONT)
    procs.worker("na")  # a new worker restores the unacked task (visibility timeout 10 s) and runs it
    outcome = app.AsyncResult(task).get(timeout=60)
    assert outcome["attempts"] == 2, procs.logs()
    status = store.get("tiny")["na"]
    assert status.state == "done" and status.attempts == 2 and status.task_id == task
    inv = wait_for("na's inventory", lambda: (i := inventory(app, "na")) and "tiny" in i.dram.models and i)
    assert inv.dram.models == ["tiny"]
    # completed once: nothing of it is left queued or unacknowledged, and no third run follows
    wait_for("the ack", lambda: not app.redis.hlen("unacked"), timeout_s=10)
    assert app.redis.llen("node.na") == 0
    assert ModelStatusStore(app.redis, app.keys).get("tiny")["na"].attempts == 2
