"""A two-node cluster for the invoker's integration tests: real invoker processes, real runtimes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from faas_llm.settings import Settings, child_environ
from faas_llm.types import (
    Action,
    ActivationRecord,
    CacheInventory,
    Exec,
    Invocation,
    Limits,
    NodeReport,
    Scaling,
    TierInventory,
    new_activation_id,
    now_ms,
)
from tests.harness import wait_for

GB = 1_000_000_000


class Cluster:
    def __init__(self, base: Settings, nodes: list[str], log_dir: Path) -> None:
        self.base = base
        self.keys = Keys(base.key_prefix)
        self.r: Any = redis.Redis.from_url(base.redis_url, decode_responses=True, socket_timeout=None)
        self.store = ActivationStore(self.r, self.keys)
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for node in nodes:
            self.start_node(node)

    def settings_of(self, node: str) -> Settings:
        return self.base.model_copy(update={"node_id": node})

    def start_node(self, node: str) -> None:
        out = (self.log_dir / f"{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "invoker"], env=child_environ(self.settings_of(node)), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        out.close()
        wait_for(f"node {node} to report", lambda: self.report(node), 30)

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
        self.r.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}" for p in self.log_dir.glob("*.log"))

    # --- shared state ----------------------------------------------------------------------
    def report(self, node: str) -> NodeReport | None:
        raw = self.r.get(self.keys.node(node))
        return NodeReport.model_validate_json(raw) if raw else None

    def containers_of(self, action: str, namespace: str = "guest") -> list[tuple[str, Any]]:
        out = []
        for node in ("node-a", "node-b"):
            report = self.report(node)
            for c in report.containers if report else []:
                if c.namespace == namespace and c.action == action and c.state.value != "removing":
                    out.append((node, c))
        return out

    def put_action(self, name: str, model: str = "tiny", code: str | None = None, concurrency: int = 1,
                   **scaling: Any) -> Action:
        action = Action(namespace="guest", name=name, exec=Exec(kind="llm", model=model, code=code),
                        limits=Limits(timeout=60_000, memory=512, concurrency=concurrency), scaling=Scaling(**scaling))
        self.r.set(self.keys.action("guest", name), action.model_dump_json())
        return action

    def publish_inventory(self, node: str, dram: list[str], ssd: list[str]) -> None:
        inv = CacheInventory(node=node, dram=TierInventory(models=dram, read_bandwidth=20 * GB),
                             ssd=TierInventory(models=ssd, read_bandwidth=2 * GB), registry_bandwidth=0.2 * GB)
        self.r.set(self.keys.node_cache(node), inv.model_dump_json(), ex=300)

    def invoke(self, action: str, params: dict[str, Any] | None = None, *, stream: bool = False,
               timeout_ms: int = 60_000) -> str:
        aid = new_activation_id()
        self.store.submit(Invocation(
            activation_id=aid, namespace="guest", action=action, subject="guest", transaction_id=aid,
            params=params if params is not None else {"prompt": "hello", "max_tokens": 4, "temperature": 0},
            deadline_ms=now_ms() + timeout_ms, stream=stream,
        ))
        return aid

    def result(self, aid: str, timeout_s: float = 90.0) -> ActivationRecord:
        record = self.store.wait(aid, timeout_s)
        if record is None:
            raise AssertionError(f"no record for {aid} after {timeout_s} s\n{self.logs()}")
        return record


def annotation(record: ActivationRecord, key: str) -> Any:
    return next((a.value for a in record.annotations if a.key == key), None)


def link_models(registry: Path, source: Path, names: list[str]) -> None:
    """Store ``source`` (a model directory, as is) under each name through the registry's API."""
    from faas_llm.registry import FileRegistry

    for name in names:
        FileRegistry(registry).push(source, name)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
