"""Fixtures of the cache-agent tests: a tiny checkpoint, a file registry holding it, and a real
cache-agent process (started with ``python -m cache_agent``, stopped with SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faas_llm.cache_client import CacheClient
from faas_llm.errors import CacheAgentError
from faas_llm.registry import FileRegistry
from faas_llm.settings import Settings, child_environ

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama demo model converted to the faas-llm checkpoint format."""
    from faas_llm.checkpoint import convert

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    convert(tiny_model_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_ckpt(tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from faas_llm.checkpoint import convert

    out = tmp_path_factory.mktemp("ckpt") / "gpt2"
    convert(tiny_gpt2_dir, out)
    return out


@pytest.fixture
def agent_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Settings of one node: a short socket path, small tiers, short TTLs."""
    return settings.model_copy(update={
        "node_id": f"n{os.getpid()}x{time.monotonic_ns() % 100000}",
        "registry_url": f"file://{tmp_path / 'registry'}",
        "dram_capacity_bytes": 16 * MiB,
        "ssd_capacity_bytes": 64 * MiB,
        "lease_ttl_s": 30.0,
        "inventory_ttl_s": 3.0,
        "log_level": "DEBUG",
    })


@pytest.fixture
def registry(agent_settings: Settings) -> FileRegistry:
    return FileRegistry(Path(agent_settings.registry.removeprefix("file://")))


class AgentProcess:
    """A cache agent in its own process."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> AgentProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "cache_agent"], cwd=REPO,
                                     env=child_environ(self.settings), stdout=self.log, stderr=subprocess.STDOUT)
        client = CacheClient(self.settings, heartbeat=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cache agent exited with {self.proc.returncode}:\n{self.output()}")
            if client.available():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"cache agent did not come up:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        self.proc = None


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[type[AgentProcess]]:
    started: list[AgentProcess] = []

    class Factory(AgentProcess):
        def __init__(self, settings: Settings) -> None:
            super().__init__(settings, tmp_path / f"agent-{len(started)}.log")
            started.append(self)

    yield Factory
    for agent in started:
        agent.stop()


@pytest.fixture
def agent(agent_settings: Settings, agent_factory: type[AgentProcess]) -> Iterator[AgentProcess]:
    proc = agent_factory(agent_settings).start()  # type: ignore[call-arg]
    yield proc
    proc.stop()


def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError("condition not reached in time")


def client_for(settings: Settings) -> CacheClient:
    client = CacheClient(settings)
    if not client.available():
        raise CacheAgentError("no agent")
    return client
