"""Gateway latency and throughput: the gateway under gunicorn, a real Redis, a queue consumer.

    .venv/bin/python -m bench.gateway_bench [--requests 300] [--concurrency 8] [--json bench/out/gateway.json]

Cases (each with ``--concurrency`` client threads, keep-alive sessions):
- ``submit (direct)``: ActivationStore.submit from Python, no HTTP: the peer the HTTP cases compare to;
- ``GET action``: auth + one Redis read;
- ``invoke non-blocking``: auth, limits, queue (202);
- ``invoke blocking``: the round trip through the queue and the consumer (tests/gateway/consumer.py,
  which "generates" instantly), i.e. the gateway's own overhead on a blocking invoke;
- ``chat completion``: the same through the OpenAI face;
- ``chat stream (to end)``: a streamed chat read to ``data: [DONE]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
import requests

from bench.common import add_common_args, print_table, write_json
from faas_llm.activations import ActivationStore
from faas_llm.auth import AuthStore
from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from faas_llm.redis_server import RedisServer, free_port
from faas_llm.settings import Settings, child_environ
from faas_llm.types import Invocation, new_activation_id, now_ms
from tests.gateway.consumer import QueueConsumer

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_case(name: str, n: int, concurrency: int, make: Callable[[], Callable[[], None]]) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        call = make()
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"case": name, "requests": n, "concurrency": concurrency, "req_per_s": n / wall,
            "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}


class Target:
    """The gateway under test: its base URL, the caller's key, a Redis client on its store."""

    def __init__(self, base: str, uuid: str, secret: str, client: redis.Redis, keys: Keys) -> None:
        self.base, self.client, self.keys = base, client, keys
        self.basic = (uuid, secret)
        self.bearer = f"Bearer {uuid}:{secret}"

    def direct(self) -> Callable[[], None]:
        """``ActivationStore.submit`` from Python: the peer without HTTP."""
        store = ActivationStore(self.client, self.keys)

        def call() -> None:
            store.submit(Invocation(
                activation_id=new_activation_id(), namespace="bench", action="direct", subject="bench",
                params={"prompt": "x"}, transaction_id="t", deadline_ms=now_ms() + 60_000))
        return call

    def http(self, method: str, path: str, **kw: Any) -> Callable[[], Callable[[], None]]:
        def make() -> Callable[[], None]:
            session = requests.Session()
            session.auth = self.basic

            def call() -> None:
                r = session.request(method, f"{self.base}{path}", timeout=60, **kw)
                assert r.status_code in (200, 202), r.text
            return call
        return make

    def stream_to_end(self) -> Callable[[], None]:
        session = requests.Session()
        session.headers["Authorization"] = self.bearer

        def call() -> None:
            with session.post(f"{self.base}/v1/chat/completions", stream=True, timeout=60,
                              json={"model": "echo", "messages": [{"role": "user", "content": "hi"}],
                                    "stream": True}) as r:
                for _ in (ln for ln in r.iter_lines() if ln.startswith(b"data: ")):
                    pass
        return call


def run_cases(target: Target, n: int, c: int) -> list[dict[str, Any]]:
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    invoke = "/api/v1/namespaces/_/actions/echo"
    rows = [
        run_case("submit (direct, no HTTP)", n, c, target.direct),
        run_case("GET action", n, c, target.http("GET", invoke)),
        run_case("invoke non-blocking", n, c, target.http("POST", invoke, json={})),
        run_case("invoke blocking", n, c, target.http("POST", f"{invoke}?blocking=true", json={"prompt": "x"})),
        run_case("chat completion", n, c, target.http("POST", "/v1/chat/completions", json=chat)),
        run_case("chat stream (to end)", max(n // 3, 10), c, target.stream_to_end),
    ]
    peer = rows[0]["p50_ms"]
    for row in rows:
        row["p50_vs_direct"] = row["p50_ms"] / peer
    return rows


def wait_healthy(base: str, tries: int = 300) -> None:
    for _ in range(tries):
        try:
            if requests.get(f"{base}/health", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway at {base} not healthy")


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the gateway")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp, RedisServer() as server:
        settings = Settings(redis_url=server.url, data_dir=Path(tmp), gateway_port=free_port(),
                            gateway_workers=args.workers, gateway_threads=16, log_level="WARNING")
        client = redis.Redis.from_url(server.url, decode_responses=True)
        keys = Keys(settings.key_prefix)
        auth = AuthStore(client, keys)
        auth.create_namespace("bench")
        creds = auth.create_key("bench")
        Limiter(client, keys, NamespaceLimits(60, 30)).set_limits(
            "bench", invocations_per_minute=10**9, concurrent_invocations=10**9)
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=child_environ(settings), cwd=REPO)
        target = Target(f"http://{settings.gateway_host}:{settings.gateway_port}", creds.uuid, creds.secret,
                        client, keys)
        consumer = QueueConsumer(server.url, keys).start()
        try:
            wait_healthy(target.base)
            requests.put(f"{target.base}/api/v1/namespaces/_/actions/echo", auth=target.basic, timeout=10,
                         json={"exec": {"kind": "llm", "model": "tiny"},
                               "parameters": [{"key": "max_tokens", "value": 4}]}).raise_for_status()
            rows = run_cases(target, args.requests, args.concurrency)
            print_table(rows, title=f"gateway under gunicorn ({args.workers} workers x 16 threads), "
                                    f"{args.concurrency} client threads")
            write_json(args.json, rows, workers=args.workers)
        finally:
            consumer.stop()
            proc.terminate()
            proc.wait(timeout=30)
            client.close()


if __name__ == "__main__":
    main()
