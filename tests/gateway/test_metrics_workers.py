"""/metrics under gunicorn counts the requests of every worker (prometheus_client multiprocess mode),
keeps a killed worker's counts, and starts from an emptied directory."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from faas_llm.redis_server import RedisServer, free_port
from faas_llm.settings import Settings
from tests.gateway.conftest import gunicorn_process, wait_healthy

HEALTH = re.compile(r'^faas_gateway_requests_total\{method="GET",route="/health",status="200"\} (\S+)$', re.M)


def health_count(base: str) -> float:
    found = HEALTH.search(requests.get(f"{base}/metrics", timeout=10).text)
    return float(found.group(1)) if found else 0.0


def fresh_get(url: str) -> None:
    """One request on a new connection (so the kernel may hand it to either worker)."""
    with requests.Session() as s:
        assert s.get(url, timeout=10, headers={"Connection": "close"}).status_code == 200


def workers_counted(metrics_dir: Path) -> set[str]:
    return {p.name.split("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}


def test_metrics_sum_every_gunicorn_worker(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_server.url, data_dir=tmp_path, gateway_port=free_port(), gateway_workers=2,
                        gateway_threads=4, log_level="WARNING")
    metrics_dir = settings.gateway_metrics_path
    metrics_dir.mkdir(parents=True)
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # a previous run's file: must be emptied at start
    with gunicorn_process(settings, tmp_path / "gunicorn.log") as (base, proc):
        assert not (metrics_dir / "counter_999999.db").exists()
        before = health_count(base)
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # batches on fresh connections until both workers have counted some (the kernel decides who accepts)
            for _ in range(100):
                list(pool.map(fresh_get, [f"{base}/health"] * 16))
                sent += 16
                if len(workers_counted(metrics_dir)) >= 2:
                    break
        pids = {str(p.pid) + ".db" for p in psutil.Process(proc.pid).children()}
        assert len(workers_counted(metrics_dir) & pids) == 2, "both workers should have served some requests"
        # one worker's registry alone would show only its share; the multiprocess total is every request
        assert health_count(base) - before == sent

        # a worker killed and replaced by gunicorn: its counts stay in the total
        victim = psutil.Process(proc.pid).children()[0]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kids = psutil.Process(proc.pid).children()
            if len(kids) == 2 and victim.pid not in {k.pid for k in kids}:
                break
            time.sleep(0.2)
        wait_healthy(base, proc)
        # wait_healthy sent at least one /health; count exactly from here on
        after_restart = health_count(base)
        assert after_restart >= before + sent
        for _ in range(10):
            fresh_get(f"{base}/health")
        assert health_count(base) == after_restart + 10
