"""Fixtures of the gateway tests: the gateway under real gunicorn (once per session) and under
werkzeug's threaded server (per test, for custom settings), namespaces with keys, and the
test-side queue consumer."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from werkzeug.serving import make_server

from faas_llm.auth import AuthStore
from faas_llm.keys import Keys
from faas_llm.redis_server import RedisServer, free_port
from faas_llm.settings import Settings, child_environ
from gateway import create_app
from tests.gateway.consumer import QueueConsumer

REPO = Path(__file__).resolve().parents[2]


def wait_healthy(base: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway at {base} not healthy after {timeout} s")


@contextmanager
def gunicorn_process(settings: Settings, log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m gateway`` with ``settings`` (logging to ``log_path``), healthy; yields its base URL
    and process, and stops it (SIGTERM, then SIGKILL after 30 s) on exit."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=child_environ(settings), cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://{settings.gateway_host}:{settings.gateway_port}"
        try:
            wait_healthy(base, proc)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def gunicorn_gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m gateway`` (gunicorn, gthread, 2 workers) on a free port; yields its base URL."""
    settings = Settings(redis_url=redis_server.url, data_dir=tmp_path_factory.mktemp("gw"),
                        gateway_port=free_port(), gateway_workers=2, gateway_threads=8, log_level="WARNING")
    with gunicorn_process(settings, tmp_path_factory.mktemp("gw-log") / "gunicorn.log") as (base, _proc):
        yield base


class ThreadServer:
    """The gateway app under werkzeug's threaded WSGI server in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.server = make_server(settings.gateway_host, settings.gateway_port, self.app, threaded=True)
        self.base = f"http://{settings.gateway_host}:{settings.gateway_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_healthy(self.base)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.app.extensions["faas_llm_gateway"].redis.close()


@pytest.fixture
def thread_gateway(settings: Settings) -> Iterator[ThreadServer]:
    """The gateway for this test's ``settings`` under werkzeug's server."""
    with ThreadServer(settings.model_copy(update={"gateway_port": free_port()})) as server:
        yield server


@dataclass(frozen=True)
class Tenant:
    namespace: str
    uuid: str
    secret: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.uuid, self.secret)

    @property
    def api_key(self) -> str:
        return f"{self.uuid}:{self.secret}"


def make_tenant(client: redis.Redis, keys: Keys, namespace: str) -> Tenant:
    store = AuthStore(client, keys)
    store.create_namespace(namespace)
    creds = store.create_key(namespace)
    return Tenant(namespace, creds.uuid, creds.secret)


@pytest.fixture
def guest(redis_client: redis.Redis, keys: Keys) -> Tenant:
    return make_tenant(redis_client, keys, "guest")


@pytest.fixture
def other(redis_client: redis.Redis, keys: Keys) -> Tenant:
    return make_tenant(redis_client, keys, "other")


@pytest.fixture
def consumer(redis_server: RedisServer, redis_client: redis.Redis, keys: Keys) -> Iterator[QueueConsumer]:
    queue_consumer = QueueConsumer(redis_server.url, keys).start()
    try:
        yield queue_consumer
    finally:
        queue_consumer.stop()


@pytest.fixture
def ow(gunicorn_gateway: str, guest: Tenant) -> Iterator[OW]:
    with requests.Session() as session:
        session.auth = guest.auth
        yield OW(gunicorn_gateway, session)


@dataclass
class OW:
    """A tiny OpenWhisk REST helper over a requests session (base URL + auth)."""

    base: str
    session: requests.Session

    def url(self, path: str) -> str:
        return f"{self.base}/api/v1/namespaces/_/{path.lstrip('/')}"

    def put_action(self, name: str, model: str = "tiny", **body: object) -> requests.Response:
        return self.session.put(self.url(f"actions/{name}"), json={"exec": {"kind": "llm", "model": model}, **body})

    def invoke(self, name: str, params: dict | None = None, **query: object) -> requests.Response:
        q = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()}
        return self.session.post(self.url(f"actions/{name}"), json=params or {}, params=q)
