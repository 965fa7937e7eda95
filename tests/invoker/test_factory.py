"""The process factory with a small stand-in runtime (an HTTP server without torch): start, logs, removal."""

from __future__ import annotations

import sys
import threading
import time

import pytest
import requests

from faas_llm.errors import InternalError
from faas_llm.settings import Settings
from invoker.factory import ProcessFactory

STAND_IN = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from faas_llm.settings import Settings

settings = Settings.from_env()
print("booting", flush=True)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        print("served " + self.path, flush=True)
        print("an error line", file=sys.stderr, flush=True)
        for stream in (sys.stdout, sys.stderr):
            print("XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX", file=stream, flush=True)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

HTTPServer((settings.runtime_host, settings.runtime_port), Handler).serve_forever()
"""


@pytest.fixture
def factory(tmp_path: object) -> ProcessFactory:
    settings = Settings(data_dir=tmp_path, runtime_start_timeout_s=30, runtime_drain_s=1)  # type: ignore[arg-type]
    return ProcessFactory(settings, command=[sys.executable, "-c", STAND_IN])


def test_process_runtime_starts_on_a_free_port_and_its_logs_are_collected(factory: ProcessFactory) -> None:
    handle = factory.start("c1")
    try:
        assert factory.alive(handle) and handle.pid is not None
        handle.logs.clear()
        assert requests.get(f"{handle.url}/health", timeout=5).status_code == 200
        lines = [line.split(" ", 1)[1] for line in handle.logs.collect(timeout_s=5)]
        assert sorted(lines) == ["stderr: an error line", "stdout: served /health"]  # order across streams: arrival
    finally:
        factory.remove(handle)
    assert not factory.alive(handle)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{handle.url}/health", timeout=2)


def test_a_runtime_that_exits_while_starting_is_an_error(tmp_path: object) -> None:
    settings = Settings(data_dir=tmp_path, runtime_start_timeout_s=30)  # type: ignore[arg-type]
    factory = ProcessFactory(settings, command=[sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(InternalError, match="exited while starting"):
        factory.start("c1")


def test_closing_the_factory_aborts_a_start_in_progress(tmp_path: object) -> None:
    settings = Settings(data_dir=tmp_path, runtime_start_timeout_s=60)  # type: ignore[arg-type]
    factory = ProcessFactory(settings, command=[sys.executable, "-c", "import time; time.sleep(60)"])
    errors: list[Exception] = []

    def start() -> None:
        try:
            factory.start("slow")
        except InternalError as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    time.sleep(0.5)
    began = time.monotonic()
    factory.close()
    thread.join(20)
    assert not thread.is_alive() and errors and time.monotonic() - began < 10
