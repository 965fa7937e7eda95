"""A real ``faas-llm up`` for the end-to-end benches: start, push a model, talk to it, stop.

The cluster runs in its own process group with a private data dir and properties file, as a user
runs it (embedded Redis, gateway under gunicorn, invoker with process containers, cache agent,
Celery worker); settings are passed as ``FAAS_LLM_*`` variables of the child's environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from faas_llm.client import Client
from faas_llm.keys import Keys
from faas_llm.properties import read_properties
from faas_llm.redis_server import free_port
from faas_llm.types import ContainerInfo, NodeReport

REPO = Path(__file__).resolve().parents[1]


def bench_env(home: Path, settings: Mapping[str, Any]) -> dict[str, str]:
    """The environment of a cluster under ``home``: this one without FAAS_LLM_*, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_LLM_")}
    env.update({
        "HOME": str(home),
        "FAAS_LLM_PROPERTIES_FILE": str(home / "props"),
        "FAAS_LLM_DATA_DIR": str(home / "data"),
        "FAAS_LLM_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    })
    env.update({f"FAAS_LLM_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@dataclass
class UpCluster:
    home: Path
    env: dict[str, str]
    #: the checkout whose code runs (cwd and PYTHONPATH of the children)
    repo: Path = REPO
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def apihost(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> str:
        return read_properties(self.home / "props")["AUTH"]

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def start(self, ready_timeout_s: float = 240.0) -> UpCluster:
        self.port = free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "up.out", "wb")  # noqa: SIM115 - the child's output for its lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "--port", str(self.port)],
                                     env={**self.env, "PYTHONPATH": str(self.repo)}, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.repo,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + ready_timeout_s
        state_file = self.data_dir / "up.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"faas-llm up exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                self.state = {}
            if self.state.get("ready"):
                return self
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"faas-llm up not ready in {ready_timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.home / "up.out").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cli(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run([sys.executable, "-m", "cli", *args], cwd=self.repo,
                              env={**self.env, "PYTHONPATH": str(self.repo)},
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"faas-llm {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def client(self, timeout: float = 300.0) -> Client:
        return Client(self.apihost, self.auth, timeout=timeout)

    def redis(self) -> Any:
        return redis.Redis.from_url(self.state["redis_url"], decode_responses=True)

    @property
    def keys(self) -> Keys:
        return Keys(self.env.get("FAAS_LLM_KEY_PREFIX", "faas"))

    def pids(self) -> dict[str, int]:
        return {name: int(pid_created[0]) for name, pid_created in (self.state.get("children") or {}).items()}

    def stop(self, timeout_s: float = 90.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> UpCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def containers(cluster: UpCluster, action: str | None = None) -> list[ContainerInfo]:
    """Containers on every node (of ``action`` only, when given), from the nodes' reports in Redis."""
    r = cluster.redis()
    try:
        out = []
        for node_id in r.zrange(cluster.keys.nodes_index(), 0, -1):
            raw = r.get(cluster.keys.node(node_id))
            if raw is not None:
                out += [c for c in NodeReport.model_validate_json(raw).containers
                        if action is None or c.action == action]
        return out
    finally:
        r.close()


def wait_until(what: str, probe: Any, timeout_s: float = 120.0, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(every_s)
    raise SystemExit(f"timed out after {timeout_s} s waiting for {what}")
