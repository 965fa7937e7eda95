"""Fixtures of the Celery tests: real Celery worker processes (``faas-llm worker``), real cache
agents, real Redis (the session's server, a clean database per test)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faas_llm.jobs import FaasCelery
from faas_llm.registry import FileRegistry
from faas_llm.settings import Settings, child_environ
from tests.cache_agent.conftest import AgentProcess
from tests.harness import wait_for
from worker.celery_app import create_celery

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


class WorkerProcess:
    """``faas-llm worker`` for one node in its own process (solo pool)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--node", settings.node_id],
            cwd=REPO, env=child_environ(settings), stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> WorkerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            return " ready." in self.output()

        wait_for(f"worker {self.settings.node_id}", ready, timeout_s)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def celery_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Short timeouts: a killed worker's task is restored after 10 s (the smallest visibility timeout)."""
    return settings.model_copy(update={
        "registry_url": f"file://{tmp_path / 'registry'}",
        "dram_capacity_bytes": 16 * MiB, "ssd_capacity_bytes": 64 * MiB, "inventory_ttl_s": 3.0,
        "celery_pool": "solo", "celery_visibility_timeout_s": 10, "celery_restore_interval_s": 1.0,
        "celery_tick_s": 3600.0, "celery_rescue_after_s": 1.0, "node_ttl_s": 5.0, "log_level": "INFO",
    })


@pytest.fixture
def registry(celery_settings: Settings) -> FileRegistry:
    return FileRegistry(Path(celery_settings.registry.removeprefix("file://")))


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from faas_llm.checkpoint import convert

    out = tmp_path_factory.mktemp("celery-ckpt") / "tiny"
    convert(tiny_model_dir, out)
    return out


@pytest.fixture
def app(celery_settings: Settings) -> Iterator[FaasCelery]:
    app = create_celery(celery_settings)
    yield app
    app.close()


class Procs:
    def __init__(self, base: Settings, tmp_path: Path) -> None:
        self.base = base
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []
        self.agents: list[AgentProcess] = []

    def node_settings(self, node: str) -> Settings:
        return self.base.model_copy(update={"node_id": node})

    def worker(self, node: str, **overrides: Any) -> WorkerProcess:
        settings = self.node_settings(node).model_copy(update=overrides)
        w = WorkerProcess(settings, self.tmp_path / f"worker-{node}-{len(self.workers)}.log")
        self.workers.append(w)
        return w.wait_ready()

    def agent(self, node: str) -> AgentProcess:
        a = AgentProcess(self.node_settings(node), self.tmp_path / f"agent-{node}.log")
        self.agents.append(a)
        return a.start()

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.output()[-4000:]}" for w in self.workers)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        for a in self.agents:
            if a.proc is not None and a.proc.poll() is None:
                a.proc.send_signal(signal.SIGCONT)
            a.stop()


@pytest.fixture
def procs(celery_settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(celery_settings, tmp_path)
    yield p
    p.close()
