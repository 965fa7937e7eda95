"""Action-runtime CPU per warm ``/run``, A/B between checkouts, interleaved.

    flock /work/helpers/bench.lock .venv/bin/python -m bench.runtime_cpu_bench \\
        --config base=/tmp/rt/base --config current=. --n 2000 --rounds 3 [--json bench/out/runtime_cpu.json]

Each config is ``LABEL=DIR``: ``python -m action_runtime`` run from checkout ``DIR`` (its cwd and
``PYTHONPATH``), its stdout and stderr pipes drained by this process as the invoker's log collector
does, initialised (``/init``) with the tiny demo model (built here unless ``--model-dir``). All the
runtimes are up at once; per round each config in turn (the order rotates every round, so the
machine's noise spreads over all of them) gets ``--n`` blocking ``/run`` calls from one client over a
keep-alive ``http.client`` connection, with the invoker's envelope (namespace, action, activation id,
transaction id, deadline) and ``{"prompt": ..., "max_tokens": --max-tokens, "temperature": 0}``.
The figures: CPU seconds (user + system, psutil, all of the process's threads) of the runtime per run,
the client's p50 / p99 latency, and, per round, the ratio to the first config's CPU.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.common import Row, add_common_args, print_table, write_json
from faas_llm.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The serverless platform"


def _drain(pipe: IO[bytes]) -> None:
    for _ in iter(lambda: pipe.read(65536), b""):
        pass


class Runtime:
    def __init__(self, label: str, repo: Path, data_dir: Path, torch_threads: int | None) -> None:
        self.label, self.repo = label, repo
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_LLM_")}
        env.update({
            "PYTHONPATH": str(repo), "FAAS_LLM_RUNTIME_PORT": str(self.port), "FAAS_LLM_RUNTIME_HOST": "127.0.0.1",
            "FAAS_LLM_DATA_DIR": str(data_dir), "FAAS_LLM_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        })
        if torch_threads is not None:
            env["FAAS_LLM_RUNTIME_TORCH_THREADS"] = str(torch_threads)
        self.proc = subprocess.Popen([sys.executable, "-m", "action_runtime"], cwd=repo, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for pipe in (self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            threading.Thread(target=_drain, args=(pipe,), daemon=True).start()
        self.ps = psutil.Process(self.proc.pid)
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        self.conn.request(method, path, data, headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def wait_up(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runtime {self.label} exited with {self.proc.returncode}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    self.disconnect()
                    return
            except OSError:
                self.conn = None
            time.sleep(0.1)
        raise RuntimeError(f"runtime {self.label} did not come up")

    def disconnect(self) -> None:
        """Close the client connection (the runtime closes one idle past its keep-alive limit)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.disconnect()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def run_body(max_tokens: int) -> dict[str, Any]:
    return {
        "value": {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0},
        "namespace": "_", "action_name": "rtcpu", "action_version": "0.0.1",
        "activation_id": uuid.uuid4().hex, "transaction_id": uuid.uuid4().hex,
        "deadline": str(int(time.time() * 1000) + 60_000),
    }


def measure(runtime: Runtime, n: int, max_tokens: int) -> dict[str, float]:
    latencies: list[float] = []
    runtime.disconnect()
    runtime.request("GET", "/health")  # connect outside the measured runs
    before = runtime.cpu_s()
    for _ in range(n):
        body = run_body(max_tokens)
        started = time.perf_counter()
        status, reply = runtime.request("POST", "/run", body)
        latencies.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"{runtime.label}: /run answered {status}: {reply[:300]!r}")
    cpu = runtime.cpu_s() - before
    runtime.disconnect()
    latencies.sort()
    return {"cpu_ms_per_run": cpu / n * 1000, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000}


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config", action="append", default=[], help="LABEL=DIR (repeatable; first = reference)")
    parser.add_argument("--n", type=int, default=2000, help="runs per config per round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=None, help="runtime_torch_threads (default: unset)")
    parser.add_argument("--model-dir", type=Path, default=None, help="the tiny model (default: built here)")
    args = parser.parse_args(argv)
    configs = [(c.partition("=")[0], Path(c.partition("=")[2]).resolve()) for c in args.config] or [("current", REPO)]

    with tempfile.TemporaryDirectory(prefix="rtcpu-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model_dir
        if model_dir is None:
            from faas_llm.demo_models import make_demo_model

            model_dir = make_demo_model(tmp / "tiny", size="tiny")
        runtimes = [Runtime(label, repo, tmp / f"data-{label}", args.torch_threads) for label, repo in configs]
        rows: list[Row] = []
        try:
            for rt in runtimes:
                rt.wait_up()
                status, reply = rt.request("POST", "/init", {"value": {"checkpoint": str(model_dir)}})
                if status != 200:
                    raise RuntimeError(f"{rt.label}: /init answered {status}: {reply[:300]!r}")
                measure(rt, args.warmup, args.max_tokens)
            for r in range(args.rounds):
                order = runtimes[r % len(runtimes):] + runtimes[: r % len(runtimes)]
                figures: dict[str, dict[str, float]] = {}
                for rt in order:
                    load = os.getloadavg()[0]
                    figures[rt.label] = {**measure(rt, args.n, args.max_tokens), "load_1m": load}
                reference = figures[runtimes[0].label]["cpu_ms_per_run"]
                for rt in runtimes:
                    f = figures[rt.label]
                    rows.append({"case": rt.label, "round": r + 1, "cpu_ms_per_run": round(f["cpu_ms_per_run"], 3),
                                 "ratio": round(f["cpu_ms_per_run"] / reference, 3),
                                 "p50_ms": round(f["p50_ms"], 3), "p99_ms": round(f["p99_ms"], 3),
                                 "load_1m": round(f["load_1m"], 2)})
        finally:
            for rt in runtimes:
                rt.stop()
    print_table(rows, title=f"action runtime CPU per warm /run, tiny model, max_tokens={args.max_tokens}, "
                            f"n={args.n} per config per round")
    write_json(args.json, rows, configs={label: str(repo) for label, repo in configs},
               n=args.n, rounds=args.rounds, max_tokens=args.max_tokens)


if __name__ == "__main__":
    main()
