"""Action runtimes driven over HTTP, as the invoker drives them: real processes (``python -m action_runtime``)
and the same server in this process (:func:`in_process`), each on a free port."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from action_runtime.server import RuntimeServer
from faas_llm.redis_server import free_port
from faas_llm.settings import Settings, child_environ

if TYPE_CHECKING:
    from action_runtime.loading import ModelSource

START_TIMEOUT_S = 90.0


class RuntimeClient:
    """The routes of a runtime at :attr:`url`, with ``requests``."""

    url: str

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=kwargs.pop("timeout", 60), **kwargs)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=10)

    def init(self, **value: Any) -> requests.Response:
        return self.post("/init", {"value": value})

    def run(self, value: dict[str, Any], **envelope: Any) -> requests.Response:
        return self.post("/run", {"value": value, **envelope})

    def stream(self, value: dict[str, Any], **envelope: Any) -> Iterator[dict[str, Any]]:
        with requests.post(self.url + "/run", json={"value": {**value, "stream": True}, **envelope},
                           stream=True, timeout=60) as response:
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"].startswith("application/x-ndjson")
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)


class InProcessRuntime(RuntimeClient):
    def __init__(self, server: RuntimeServer) -> None:
        self.server = server
        self.url = server.url


@contextmanager
def in_process(settings: Settings, sources: list[ModelSource] | None = None) -> Iterator[InProcessRuntime]:
    """The runtime's own server in this process on a free loopback port (no prewarm: the test process
    has torch already); stopped (drained, its cache-agent lease given back) at the end."""
    local = settings.model_copy(update={"runtime_host": "127.0.0.1", "runtime_port": 0})
    server = RuntimeServer(local, sources, do_prewarm=False).start()
    try:
        yield InProcessRuntime(server)
    finally:
        server.stop(10.0)


class RuntimeProcess(RuntimeClient):
    """``python -m action_runtime`` with its stdout and stderr captured to files."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings.model_copy(update={"runtime_port": free_port(), "runtime_host": "127.0.0.1"})
        self.url = f"http://127.0.0.1:{self.settings.runtime_port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / "stdout.log"
        self.stderr_path = log_dir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RuntimeProcess:
        return self.launch().wait_up()

    def launch(self) -> RuntimeProcess:
        """Start the process (several can boot at once; then :meth:`wait_up` each)."""
        env = {**child_environ(self.settings), "PYTHONUNBUFFERED": "1"}
        env.pop("PORT", None)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "action_runtime"], env=env, stdout=out, stderr=err)
        return self

    def wait_up(self) -> RuntimeProcess:
        """Wait until the runtime answers /health (its worker has booted and prewarmed)."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the runtime exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the runtime did not come up in {START_TIMEOUT_S} s:\n{self.stderr()}")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture(scope="module")
def runtime_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of a module's runtimes (no Redis needed: the runtime talks only HTTP)."""
    return Settings(data_dir=tmp_path_factory.mktemp("runtime-data"), runtime_threads=8, runtime_drain_s=30.0)


def start_runtime(settings: Settings, tmp_path_factory: pytest.TempPathFactory, name: str) -> RuntimeProcess:
    return RuntimeProcess(settings, tmp_path_factory.mktemp(name)).start()
