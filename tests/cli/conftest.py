"""Run the ``faas-llm`` CLI as a subprocess, and a real ``faas-llm up`` cluster for a test module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from faas_llm.redis_server import free_port


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    """``faas-llm`` with a private environment (properties file, data dir)."""

    env: dict[str, str]
    home: Path

    def __call__(self, *args: str, timeout: float = 120, input: str | None = None) -> CliResult:
        proc = subprocess.run([sys.executable, "-m", "cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, input=input)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, timeout: float = 120) -> CliResult:
        result = self(*args, timeout=timeout)
        assert result.code == 0, f"faas-llm {' '.join(args)} -> {result.code}\n{result.out}\n{result.err}"
        return result


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_LLM_")}
    env.update({
        "HOME": str(home),
        "FAAS_LLM_PROPERTIES_FILE": str(home / "props"),
        "FAAS_LLM_DATA_DIR": str(home / "data"),
        "FAAS_LLM_GATEWAY_WORKERS": "1",
        "FAAS_LLM_GATEWAY_THREADS": "8",
        "FAAS_LLM_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    })
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(cli_env(home), home)


@dataclass
class UpCluster:
    """A `faas-llm up` running in the foreground of its own process group (like a terminal's job)."""

    proc: subprocess.Popen[str]
    cli: Cli
    port: int
    data_dir: Path
    log: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def apihost(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def ctrl_c(self, timeout: float = 90) -> int:
        """SIGINT to the whole group, as a terminal's Ctrl-C does; returns up's exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=timeout)


def start_up(cli: Cli, *extra: str, ready_timeout: float = 150) -> UpCluster:
    port = free_port()
    data_dir = cli.home / "data"
    log = cli.home / "up.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "--port", str(port), *extra],
                                env=cli.env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    cluster = UpCluster(proc, cli, port, data_dir, log)
    deadline = time.monotonic() + ready_timeout
    state_file = data_dir / "up.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"faas-llm up exited with {proc.returncode}:\n{log.read_text()}")
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("ready"):
            cluster.state = state
            return cluster
        time.sleep(0.2)
    stop_up(cluster)
    raise AssertionError(f"faas-llm up not ready in {ready_timeout} s:\n{log.read_text()}")


def stop_up(cluster: UpCluster) -> None:
    if cluster.proc.poll() is None:
        try:
            cluster.ctrl_c(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.proc.pid, signal.SIGKILL)
            cluster.proc.wait()
