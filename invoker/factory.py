"""Container factories: start and stop action runtimes behind one interface.

:class:`ProcessFactory` (the default, ``settings.container_factory = "process"``) starts each
runtime as a local process (``python -m action_runtime``, i.e. ``faas-llm-runtime``) on a free
port, in its own process group, with the invoker's settings in its environment
(:func:`faas_llm.settings.child_environ`, ``runtime_port`` set). On Linux the runtime is
killed if the invoker dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of an invoker leaves no
orphans. :class:`~invoker.docker_factory.DockerFactory` starts containers through the Docker
Engine API instead. Both return a :class:`RuntimeHandle` whose ``url`` speaks the action
protocol and whose ``logs`` collect its output.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from faas_llm.errors import InternalError
from faas_llm.redis_server import free_port
from faas_llm.settings import Settings, child_environ
from invoker.logs import LogCollector

_PR_SET_PDEATHSIG = 1


def gpu_ids(setting: str) -> list[str]:
    """The GPU ids of ``node_gpus`` (``"0,1"`` -> ``["0", "1"]``; empty: none)."""
    return [g for g in setting.split(",") if g]


class GpuSlots:
    """The node's GPUs as slots: a runtime takes one for its life and gives it back when removed."""

    def __init__(self, ids: list[str]) -> None:
        self._lock = threading.Lock()
        self._free = list(ids)

    def take(self) -> str:
        with self._lock:
            if not self._free:
                raise InternalError("every GPU of this node serves a runtime already")
            return self._free.pop(0)

    def give(self, gpu: str) -> None:
        with self._lock:
            self._free.append(gpu)


@dataclass
class RuntimeHandle:
    """A started runtime: its id, base URL and log collector (``native`` is the factory's own object)."""

    id: str
    url: str
    logs: LogCollector
    native: Any = None
    pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ContainerFactory(ABC):
    """Starts and removes action runtimes."""

    name: str

    @abstractmethod
    def start(self, container_id: str) -> RuntimeHandle:
        """Start a runtime and return once it listens (raises :class:`InternalError` otherwise)."""

    @abstractmethod
    def alive(self, handle: RuntimeHandle) -> bool:
        """Whether the runtime is still running."""

    @abstractmethod
    def remove(self, handle: RuntimeHandle, graceful: bool = True) -> None:
        """Stop the runtime (``graceful``: SIGTERM and the drain period first) and free its resources."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the factory's own resources."""


def wait_ready(url: str, alive: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``GET /health`` until it answers 200; fail early if the runtime exits."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while time.monotonic() < deadline:
        if not alive():
            raise InternalError(f"the action runtime at {url} exited while starting")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise InternalError(f"the action runtime at {url} did not start within {timeout_s:.0f} s")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class ProcessFactory(ContainerFactory):
    """Runtimes as local processes on free ports."""

    name = "process"

    def __init__(self, settings: Settings, command: list[str] | None = None) -> None:
        self.settings = settings
        self.command = command or [sys.executable, "-m", "action_runtime"]
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._closed = False
        gpus = gpu_ids(settings.node_gpus)
        self.gpus = GpuSlots(gpus) if gpus else None

    def _environ(self, port: int) -> tuple[dict[str, str], str | None]:
        """The runtime's environment; on a GPU node, with a GPU of its own."""
        if self.gpus is None:
            return child_environ(self.settings.model_copy(update={"runtime_port": port})), None
        gpu = self.gpus.take()
        child = self.settings.model_copy(update={"runtime_port": port, "runtime_device": "cuda"})
        return {**child_environ(child), "CUDA_VISIBLE_DEVICES": gpu}, gpu

    def start(self, container_id: str) -> RuntimeHandle:
        port = free_port(self.settings.runtime_host)
        env, gpu = self._environ(port)
        logs = LogCollector(self.settings.max_log_bytes)
        try:
            proc = subprocess.Popen(
                self.command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except BaseException:
            if gpu is not None and self.gpus is not None:
                self.gpus.give(gpu)
            raise
        with self._lock:
            self._procs[proc.pid] = proc
            closed = self._closed
        if closed:
            _signal_group(proc.pid, signal.SIGKILL)
        assert proc.stdout is not None and proc.stderr is not None
        logs.follow("stdout", proc.stdout)
        logs.follow("stderr", proc.stderr)
        handle = RuntimeHandle(container_id, f"http://{self.settings.runtime_host}:{port}", logs, proc, proc.pid,
                               extra={"gpu": gpu} if gpu is not None else {})
        try:
            wait_ready(handle.url, lambda: proc.poll() is None, self.settings.runtime_start_timeout_s)
        except InternalError:
            self.remove(handle, graceful=False)
            raise
        return handle

    def alive(self, handle: RuntimeHandle) -> bool:
        proc: subprocess.Popen[bytes] = handle.native
        return proc.poll() is None

    def remove(self, handle: RuntimeHandle, graceful: bool = True) -> None:
        proc: subprocess.Popen[bytes] = handle.native
        if proc.poll() is None and graceful:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.settings.runtime_drain_s + 5)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            pass
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        with self._lock:
            known = self._procs.pop(proc.pid, None) is not None
        gpu = handle.extra.get("gpu")
        if known and gpu is not None and self.gpus is not None:
            self.gpus.give(gpu)

    def close(self) -> None:
        """Kill every runtime this factory started that still runs (starts in progress fail at once)."""
        with self._lock:
            self._closed = True
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
