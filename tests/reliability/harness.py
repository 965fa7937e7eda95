"""A real ``faas-llm up`` cluster for fault, bad-input and security tests, and the bookkeeping of
accepted invocations against activation records.

The cluster runs on a Redis this harness owns (``RedisServer(appendonly=True)``, passed with
``--redis-url``), so a test can restart Redis on the same port and directory. Every invocation
the gateway accepts (202 with an activation id) is remembered in :class:`Ledger`; a fault test
ends with :meth:`Ledger.settle`: each accepted id has exactly one record, once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
import requests

from faas_llm.activations import ActivationStore
from faas_llm.keys import Keys
from faas_llm.properties import read_properties
from faas_llm.redis_server import RedisServer
from faas_llm.types import ActivationRecord
from tests.cli.conftest import UpCluster
from tests.harness import wait_for

MODEL = "tiny"

#: a handler that waits (so a fault can land mid-invocation), then generates greedily
SLOW_GEN = """
import time

def main(args):
    time.sleep(float(args.get("sleep", 0)))
    return llm.generate(prompt=args.get("prompt", "hello"), max_tokens=int(args.get("max_tokens", 4)), temperature=0)
"""


def describe(records: dict[str, ActivationRecord] | list[ActivationRecord]) -> list[str]:
    """One line per record for an assertion message: id, node, status and the error, if any."""
    out = []
    for record in records.values() if isinstance(records, dict) else records:
        result = record.response.result or {}
        error = result.get("error") if isinstance(result, dict) else None
        line = f"{record.activationId} on {record.node}: {record.response.status}"
        out.append(f"{line} ({error})" if error else line)
    return out


def failed(records: dict[str, ActivationRecord]) -> list[str]:
    """:func:`describe` of the records that are not a success."""
    return describe([r for r in records.values() if not r.response.success])


@dataclass
class Ledger:
    """Accepted activation ids (in order) of one fault scenario."""

    accepted: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)

    def settle(self, store: ActivationStore, namespace: str = "guest", timeout_s: float = 120.0
               ) -> dict[str, ActivationRecord]:
        """Wait until every accepted invocation has its record; assert one record each, no duplicate."""
        assert len(set(self.accepted)) == len(self.accepted), "the gateway handed out an activation id twice"
        deadline = time.monotonic() + timeout_s
        records: dict[str, ActivationRecord] = {}
        for aid in self.accepted:
            record = store.wait(aid, max(0.1, deadline - time.monotonic()))
            assert record is not None, f"accepted activation {aid} has no record after {timeout_s} s (lost)"
            assert record.activationId == aid
            records[aid] = record
        listed = Counter(store.r.zrange(store.keys.activations_index(namespace), 0, -1))
        twice = [aid for aid in self.accepted if listed[aid] != 1]
        assert not twice, f"activations listed other than once: {twice}"
        for aid in self.accepted:  # nothing left queued or pending for an activation that has its record
            assert store.pending(aid) is None, f"{aid} is still pending although it has a record"
        return records


@dataclass
class RelCluster:
    up: UpCluster
    redis: RedisServer
    key: str
    r: Any
    store: ActivationStore
    http: requests.Session

    @property
    def apihost(self) -> str:
        return self.up.apihost

    @property
    def data_dir(self) -> Path:
        return self.up.data_dir

    def url(self, path: str) -> str:
        return f"{self.apihost}/api/v1/namespaces/_/{path.lstrip('/')}"

    # --- actions and invocations ------------------------------------------------------
    def put_action(self, name: str, model: str = MODEL, code: str | None = None, **body: Any) -> None:
        exec_: dict[str, Any] = {"kind": "llm", "model": model}
        if code is not None:
            exec_["code"] = code
        reply = self.http.put(self.url(f"actions/{name}"), params={"overwrite": "true"},
                              json={"exec": exec_, **body}, timeout=30)
        assert reply.status_code == 200, reply.text

    def invoke(self, name: str, params: dict[str, Any], ledger: Ledger | None = None,
               timeout: float = 30) -> str | None:
        """A non-blocking invoke; the activation id when the gateway accepted it (then noted in ``ledger``)."""
        try:
            reply = self.http.post(self.url(f"actions/{name}"), json=params, timeout=timeout)
        except requests.RequestException:
            if ledger is not None:
                ledger.refused.append(0)
            return None
        if reply.status_code == 202:
            aid = str(reply.json()["activationId"])
            if ledger is not None:
                ledger.accepted.append(aid)
            return aid
        if ledger is not None:
            ledger.refused.append(reply.status_code)
        return None

    def invoke_blocking(self, name: str, params: dict[str, Any], timeout: float = 120) -> requests.Response:
        return self.http.post(self.url(f"actions/{name}"), json=params, params={"blocking": "true"},
                              timeout=timeout)

    def serves(self, name: str = "canary", timeout_s: float = 120.0) -> ActivationRecord:
        """The cluster answers a fresh invocation successfully (retrying while it recovers)."""
        def attempt() -> ActivationRecord | None:
            aid = self.invoke(name, {"prompt": "canary", "max_tokens": 2})
            if aid is None:
                return None
            record = self.store.wait(aid, 60)
            return record if record is not None and record.response.success else None
        return wait_for(f"{name} to be served", attempt, timeout_s, every_s=1.0)

    # --- processes --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "up.json").read_text()))

    def service(self, name: str) -> psutil.Process:
        pid, _created = self.state()["children"][name]
        return psutil.Process(int(pid))

    def wait_restarted(self, name: str, old_pid: int, timeout_s: float = 60.0) -> psutil.Process:
        def fresh() -> psutil.Process | None:
            try:
                proc = self.service(name)
            except (KeyError, OSError, ValueError, psutil.Error):
                return None
            return proc if proc.pid != old_pid and proc.is_running() else None
        return wait_for(f"{name} to be restarted by faas-llm up", fresh, timeout_s, every_s=0.2)

    def runtimes(self) -> list[psutil.Process]:
        """Action runtime processes (gunicorn masters started by an invoker)."""
        out = []
        for proc in self.up.descendants():
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if "action_runtime" in cmd and proc.parent() is not None and \
                    "action_runtime" not in " ".join(proc.parent().cmdline()):  # type: ignore[union-attr]
                out.append(proc)
        return out

    def busy_runtime(self, activation_id: str) -> psutil.Process:
        """The runtime running ``activation_id`` (from the run registry the invoker keeps in Redis)."""
        def find() -> psutil.Process | None:
            url = self.running_url(activation_id)
            if url is None:
                return None
            port = int(url.rsplit(":", 1)[1])
            for proc in self.runtimes():
                try:
                    if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
                           for c in proc.net_connections("tcp")):
                        return proc
                except psutil.Error:
                    continue
            return None
        return wait_for(f"the runtime of {activation_id}", find, 60)

    def port_of(self, name: str) -> int:
        assert name == "gateway"
        return self.up.port

    def metrics_ports(self) -> list[int]:
        env = self.up.cli.env
        return [int(env[k]) for k in ("FAAS_LLM_INVOKER_METRICS_PORT", "FAAS_LLM_CACHE_METRICS_PORT") if k in env]

    def running_url(self, activation_id: str) -> str | None:
        raw = self.r.get(self.store.keys.activation_running(activation_id))
        if not raw:
            return None
        return str(json.loads(raw)["url"])


def kill9_group(proc: psutil.Process) -> None:
    """SIGKILL a process and its process group (a runtime is gunicorn master + worker)."""
    try:
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill9(proc: psutil.Process) -> None:
    try:
        proc.send_signal(signal.SIGKILL)
    except psutil.Error:
        pass


def guest_key(up: UpCluster) -> str:
    return read_properties(up.cli.home / "props")["AUTH"]


def open_store(url: str, prefix: str = "faas") -> tuple[Any, ActivationStore]:
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
    return client, ActivationStore(client, Keys(prefix))
