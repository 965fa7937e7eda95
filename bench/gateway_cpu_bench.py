"""Gateway CPU per blocking invoke, A/B between checkouts (and gunicorn layouts), one Redis, interleaved.

    flock /work/helpers/bench.lock .venv/bin/python -m bench.gateway_cpu_bench \\
        --config base=/tmp/gw/base --config current=. --n 2000 --rounds 3 [--json bench/out/gateway_cpu.json]

Each config is ``LABEL=DIR[,workers=W][,threads=T][,SETTING=VALUE]`` (SETTING: a Settings field, in the
gateway's environment): ``python -m gateway`` (gunicorn gthread) run from
checkout ``DIR``. Per round the configs run one after the other (so the machine's noise spreads over all
of them), each against the same redis-server and the same queue consumer (``tests/gateway/consumer.py``
in a process of its own, which "generates" instantly, so only the gateway's work is in the way).
The client (``--concurrency`` threads, keep-alive ``http.client``) sends ``--n`` blocking invokes
(``POST /api/v1/namespaces/_/actions/X?blocking=true``) then ``--n`` ``/v1/completions``; the figures
are CPU seconds (user + system, psutil) of the gateway's processes (master + workers) and of
redis-server, per request, and the client-side p50 latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import redis

from bench.common import Row, add_common_args, print_table, write_json
from faas_llm.auth import AuthStore
from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from faas_llm.redis_server import RedisServer, free_port
from faas_llm.settings import Settings, child_environ

REPO = Path(__file__).resolve().parents[1]
CONSUMER = """
import sys, time, signal
from faas_llm.keys import Keys
from tests.gateway.consumer import QueueConsumer
c = QueueConsumer(sys.argv[1], Keys(sys.argv[2])).start()
signal.signal(signal.SIGTERM, lambda *a: (c.stop(), sys.exit(0)))
while True:
    time.sleep(1)
"""


def parse_config(text: str) -> dict[str, Any]:
    label, _, rest = text.partition("=")
    parts = rest.split(",")
    config: dict[str, Any] = {"label": label, "repo": Path(parts[0]).resolve(), "workers": 2, "threads": 16,
                              "settings": {}}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key in ("workers", "threads"):
            config[key] = int(value)
        else:  # any other Settings field, e.g. gateway_fast_path=false
            config["settings"][key] = value
    return config


def checkout_environ(settings: Settings) -> dict[str, str]:
    """:func:`child_environ` with only the settings set explicitly (an older checkout refuses settings
    it does not know)."""
    env = child_environ(settings)
    explicit = {f"FAAS_LLM_{name.upper()}" for name in settings.model_fields_set}
    return {k: v for k, v in env.items() if not k.startswith("FAAS_LLM_") or k in explicit}


def tree_cpu(pid: int) -> float:
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def drive(port: int, auth: str, path: str, body: bytes, n: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    left = [n]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": auth, "Content-Type": "application/json"}
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            start = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status}")
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(latencies)


def run_config(config: dict[str, Any], server: RedisServer, auth: str, args: argparse.Namespace,
               tmp: Path) -> list[Row]:
    port = free_port()
    settings = Settings(redis_url=server.url, data_dir=tmp / config["label"], gateway_port=port,
                        gateway_workers=config["workers"], gateway_threads=config["threads"], log_level="WARNING")
    env = checkout_environ(settings)
    env.update({f"FAAS_LLM_{k.upper()}": v for k, v in config["settings"].items()})
    env["PYTHONPATH"] = str(config["repo"])
    log = (tmp / f"{config['label']}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=config["repo"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    rows: list[Row] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                log.flush()
                tail = (tmp / f"{config['label']}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gateway {config['label']} did not start:\n{tail}")
            time.sleep(0.1)
        redis_pid = server.proc.pid if server.proc else 0
        cases = [
            ("invoke blocking", "/api/v1/namespaces/_/actions/bench?blocking=true", b'{"max_tokens":1}'),
            ("openai completion", "/v1/completions", b'{"model":"bench","prompt":"hi","max_tokens":1}'),
        ]
        for case, path, body in cases:
            drive(port, auth, path, body, 100, args.concurrency)  # warm-up: connections, caches
            gw0, rd0, t0 = tree_cpu(proc.pid), tree_cpu(redis_pid), time.perf_counter()
            lat = drive(port, auth, path, body, args.n, args.concurrency)
            wall = time.perf_counter() - t0
            gw1, rd1 = tree_cpu(proc.pid), tree_cpu(redis_pid)
            rows.append({
                "case": case, "config": config["label"], "workers": config["workers"], "threads": config["threads"],
                "n": args.n, "gateway_cpu_ms": round((gw1 - gw0) / args.n * 1000, 3),
                "redis_cpu_ms": round((rd1 - rd0) / args.n * 1000, 3),
                "p50_ms": round(lat[len(lat) // 2] * 1000, 2), "req_per_s": round(args.n / wall, 1),
                "load1": round(os.getloadavg()[0], 2),
            })
            print(rows[-1], flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--config", action="append", required=True,
                        help="LABEL=DIR[,workers=W][,threads=T][,SETTING=VALUE]")
    parser.add_argument("--n", type=int, default=2000, help="requests per case and config")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    args = parser.parse_args(argv)
    configs = [parse_config(c) for c in args.config]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gwcpu-") as tmp_dir, RedisServer() as server:
        tmp = Path(tmp_dir)
        keys = Keys(Settings().key_prefix)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        store = AuthStore(client, keys)
        store.create_namespace("bench")
        creds = store.create_key("bench")
        Limiter(client, keys, NamespaceLimits(1, 1)).set_limits("bench", invocations_per_minute=10**9,
                                                                 concurrent_invocations=10**6)
        auth = "Basic " + b64encode(str(creds).encode()).decode()
        consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, server.url, keys.prefix], cwd=REPO,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            action = {"exec": {"kind": "llm", "model": "tiny"}, "limits": {"concurrency": 64}}
            first = configs[0]
            # create the action through a gateway (the stored form is the service's)
            settings = Settings(redis_url=server.url, data_dir=tmp / "setup", gateway_port=free_port())
            env = checkout_environ(settings)
            env["PYTHONPATH"] = str(first["repo"])
            setup = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=first["repo"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(600):
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", settings.gateway_port, timeout=2)
                        conn.request("PUT", "/api/v1/namespaces/_/actions/bench", body=json.dumps(action),
                                     headers={"Authorization": auth, "Content-Type": "application/json"})
                        if conn.getresponse().status == 200:
                            break
                    except OSError:
                        time.sleep(0.1)
            finally:
                setup.terminate()
                setup.wait()
            for round_no in range(args.rounds):
                for config in configs:
                    for row in run_config(config, server, auth, args, tmp):
                        rows.append({**row, "round": round_no + 1})
        finally:
            consumer.terminate()
            consumer.wait(timeout=30)
            client.close()
    print_table(rows, ["case", "config", "workers", "threads", "round", "gateway_cpu_ms", "redis_cpu_ms", "p50_ms",
                       "req_per_s", "load1"])
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
