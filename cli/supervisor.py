"""Start and stop the child processes of a one-node cluster (``faas-llm up``).

The services are data: :data:`SERVICES` lists each one's name, how to start it, what
must exist in the package for it to be started, and its readiness probe. A service
whose entry point is not in the installed package is skipped (and said so), so the
cluster grows as the package does; a new service is one more line in the table.

Every child runs in its own session (process group) with the environment of
:func:`~faas_llm.settings.child_environ`, and logs to ``<data_dir>/logs/<name>.log``.
Stopping sends SIGTERM to each group in reverse start order, waits a grace period,
then SIGKILLs the group and every descendant seen before the stop (a process that
moved to a session of its own too), so nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from faas_llm import probes
from faas_llm.errors import ConfigError
from faas_llm.settings import Settings, child_environ


def module_exists(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class ServiceSpec:
    """One kind of child process."""

    name: str
    #: the command after the Python interpreter, e.g. ``("-m", "gateway")``
    args: tuple[str, ...]
    #: whether the installed package has this service now
    available: Callable[[], bool]
    ready: probes.Probe = probes.always
    #: the entry point's name, for messages ("faas-llm-gateway")
    entry_point: str = ""

    def argv(self) -> list[str]:
        return [sys.executable, *self.args]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("cache-agent", ("-m", "cache_agent"), lambda: module_exists("cache_agent.__main__"),
                probes.cache_agent_ready, "cache-agent"),
    ServiceSpec("gateway", ("-m", "gateway"), lambda: module_exists("gateway.__main__"),
                probes.gateway_ready, "faas-llm-gateway"),
    ServiceSpec("invoker", ("-m", "invoker"), lambda: module_exists("invoker.__main__"),
                probes.invoker_ready, "faas-llm-invoker"),
    ServiceSpec("worker", ("-m", "worker"), lambda: module_exists("worker.__main__"),
                probes.always, "faas-llm worker"),
)


def available_services(specs: Iterable[ServiceSpec] = SERVICES) -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    """(the services the package has now, the ones it lacks)."""
    have: list[ServiceSpec] = []
    lack: list[ServiceSpec] = []
    for spec in specs:
        (have if spec.available() else lack).append(spec)
    return have, lack


@dataclass
class Child:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    #: descendants seen while running, pid -> create time (so ones that left the group are found
    #: at stop, and a pid reused since by an unrelated process is left alone)
    seen: dict[int, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def remember_descendants(self, table: ProcessTable | None = None) -> None:
        """Record the child's descendants now (from ``table``, one read of the process list shared by
        all children; default: a read of its own). A pid seen before keeps its create time."""
        table = table or ProcessTable.scan()
        for pid in table.descendants(self.pid):
            if pid not in self.seen:
                try:
                    self.seen[pid] = psutil.Process(pid).create_time()
                except psutil.Error:
                    continue  # gone since the scan


@dataclass(frozen=True)
class ProcessTable:
    """One read of the process list: every process's parent. ``psutil``'s ``children(recursive=True)``
    reads the whole list on every call; the supervisor's loop asks for every child twice a second, so it
    reads it once per pass, and only the parent field (measured: a pass over 5 children took ~8.5 ms of
    CPU with a psutil scan per child, ~23 ms per second of ``faas-llm up`` idling)."""

    parent: dict[int, int]

    @classmethod
    def scan(cls) -> ProcessTable:
        if not os.path.isdir("/proc/self"):  # not Linux: psutil's portable (slower) listing
            return cls({p.pid: int(p.info["ppid"]) for p in psutil.process_iter(["ppid"])
                        if p.info.get("ppid") is not None})
        parent: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # exited while listed
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
            fields = stat[stat.rfind(b")") + 2:].split(b" ", 2)
            if len(fields) >= 2:
                parent[int(name)] = int(fields[1])
        return cls(parent)

    def descendants(self, pid: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for child, parent in self.parent.items():
            children.setdefault(parent, []).append(child)
        out: dict[int, None] = {}  # ordered, and a pid loop (a reused pid) cannot go round for ever
        todo = list(children.get(pid, ()))
        while todo:
            p = todo.pop()
            if p in out or p == pid:
                continue
            out[p] = None
            todo.extend(children.get(p, ()))
        return list(out)


class Supervisor:
    """Runs a set of services for one :class:`Settings`; ``start`` then ``stop`` (or use ``with``)."""

    def __init__(self, settings: Settings, specs: Iterable[ServiceSpec] = SERVICES) -> None:
        self.settings = settings
        self.specs = list(specs)
        self.children: list[Child] = []
        self.log_dir = settings.data_dir / "logs"

    # --- starting -------------------------------------------------------------------------
    def spawn(self, spec: ServiceSpec) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child; closed in stop()
        proc = subprocess.Popen(
            spec.argv(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=child_environ(self.settings), start_new_session=True,
        )
        child = Child(spec, proc, log_path, log_file)
        self.children.append(child)
        return child

    def start(self, timeout_s: float = 120.0, on_ready: Callable[[Child], None] | None = None) -> list[Child]:
        """Start every service, then wait until each is ready; on a failure stop all and raise ConfigError."""
        try:
            for spec in self.specs:
                self.spawn(spec)
            self.wait_ready(timeout_s, on_ready)
        except BaseException:
            self.stop()
            raise
        return self.children

    def wait_ready(self, timeout_s: float, on_ready: Callable[[Child], None] | None = None) -> None:
        pending = list(self.children)
        deadline = time.monotonic() + timeout_s
        while pending:
            for child in list(pending):
                if not child.alive():
                    raise ConfigError(
                        f"{child.spec.name} exited with {child.proc.returncode} while starting; "
                        f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                    )
                if child.spec.ready(self.settings):
                    pending.remove(child)
                    if on_ready:
                        on_ready(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.spec.name for c in pending)
                raise ConfigError(f"not ready within {timeout_s:g} s: {names} (logs in {self.log_dir})")
            if pending:
                time.sleep(0.1)

    # --- running --------------------------------------------------------------------------
    def dead(self) -> list[Child]:
        """Children that exited on their own; also records live ones' descendants."""
        out = []
        table = ProcessTable.scan()
        for child in self.children:
            if child.alive():
                child.remember_descendants(table)
            else:
                out.append(child)
        return out

    def pids(self) -> dict[str, int]:
        return {c.spec.name: c.pid for c in self.children}

    def restart(self, child: Child) -> Child:
        """Start a child that died again, in its place (same log file); its leftovers are killed first."""
        _signal_group(child.pid, signal.SIGKILL)
        child.proc.wait()
        kill_all(child.seen, grace_s=0)
        child.log_file.close()
        index = self.children.index(child)
        self.children.remove(child)
        fresh = self.spawn(child.spec)
        self.children.remove(fresh)
        self.children.insert(index, fresh)
        return fresh

    # --- stopping -------------------------------------------------------------------------
    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM each group (reverse order), wait up to ``grace_s`` in all, then SIGKILL whatever is left."""
        children = list(reversed(self.children))
        for child in children:
            child.remember_descendants()
        for child in children:
            if child.alive():
                _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in children:
            # the leader may be gone while others of its group live on: always sweep the group
            _signal_group(child.pid, signal.SIGKILL)
            if child.alive():
                child.proc.kill()
            child.proc.wait()
            kill_all(child.seen, grace_s=max(0.0, deadline - time.monotonic()))
            child.log_file.close()
        self.children = []

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RestartBudget:
    """At most ``most`` restarts of one service within ``window_s``: a crash loop is not restarted forever."""

    most: int = 5
    window_s: float = 60.0
    times: dict[str, list[float]] = field(default_factory=dict)

    def allow(self, name: str, now: float) -> bool:
        """Whether ``name`` may be restarted at ``now`` (counts the restart when it may)."""
        recent = [t for t in self.times.get(name, []) if now - t < self.window_s]
        if len(recent) >= self.most:
            self.times[name] = recent
            return False
        self.times[name] = [*recent, now]
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the child is its group's leader (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all(pids: dict[int, float], grace_s: float = 5.0) -> None:
    """SIGTERM these processes (pid -> create time) if they still exist, then SIGKILL those that outlive
    ``grace_s``. A pid whose create time differs is another process now, and is not touched."""
    procs = []
    for pid, created in pids.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01:
                procs.append(proc)
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
