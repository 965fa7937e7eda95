"""One real ``faas-llm up`` cluster for the whole reliability suite (package scope: it starts once).

Settings shorten the clocks of failure detection (node TTL, claim idle time, Celery restore)
so faults resolve in seconds; the code paths are those of the defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from faas_llm.redis_server import RedisServer, free_port
from tests.cli.conftest import Cli, cli_env, start_up, stop_up
from tests.reliability.harness import MODEL, RelCluster, guest_key, open_store

FAST_FAILURE_DETECTION = {
    "FAAS_LLM_HEARTBEAT_INTERVAL_S": "0.5",
    "FAAS_LLM_NODE_TTL_S": "3",
    "FAAS_LLM_CLAIM_IDLE_MS": "3000",
    "FAAS_LLM_CELERY_VISIBILITY_TIMEOUT_S": "10",
    "FAAS_LLM_CELERY_RESTORE_INTERVAL_S": "1",
    "FAAS_LLM_CELERY_RESCUE_AFTER_S": "5",
    "FAAS_LLM_CELERY_TICK_S": "2",
}


@pytest.fixture(scope="package")
def rel(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RelCluster]:
    home = tmp_path_factory.mktemp("rel-home")
    redis_server = RedisServer(port=free_port(), data_dir=home / "redis", appendonly=True).start()
    env = cli_env(
        home, FAAS_LLM_DRAM_CAPACITY_BYTES=str(64 * 1024 * 1024), FAAS_LLM_RUNTIME_TORCH_THREADS="1",
        FAAS_LLM_PREWARM_COUNT="1", FAAS_LLM_MAX_CONTAINERS="4", FAAS_LLM_RUNTIME_DRAIN_S="1",
        FAAS_LLM_INVOCATIONS_PER_MINUTE="100000", FAAS_LLM_CONCURRENT_INVOCATIONS="1000",
        FAAS_LLM_LOG_LEVEL="INFO", FAAS_LLM_INVOKER_METRICS_PORT=str(free_port()),
        FAAS_LLM_CACHE_METRICS_PORT=str(free_port()), **FAST_FAILURE_DETECTION,
    )
    cli = Cli(env, home)
    up = start_up(cli, "--redis-url", redis_server.url)
    client = None
    try:
        cli.ok("model", "push", str(tiny_model_dir), "--name", MODEL, timeout=180)
        client, store = open_store(redis_server.url)
        with requests.Session() as http:
            http.auth = tuple(guest_key(up).split(":", 1))  # type: ignore[assignment]
            cluster = RelCluster(up, redis_server, guest_key(up), client, store, http)
            cluster.put_action("canary")
            yield cluster
    finally:
        stop_up(up)
        if client is not None:
            client.close()
        redis_server.cleanup()
