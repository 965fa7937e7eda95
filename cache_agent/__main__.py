"""``cache-agent`` (and ``faas-llm cache-agent``): run the node's cache agent in the foreground.

Settings come from the environment (FAAS_LLM_*: node id, capacities, paths, registry,
Redis); a few options override them. SIGTERM/SIGINT stop it cleanly: the socket and the
shared-memory segment are removed and the Redis inventory withdrawn.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from faas_llm.errors import FaasLLMError
from faas_llm.settings import Settings


def run(settings: Settings, ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Start the agent, its server, inventory publisher and metrics; block until ``stop`` is set."""
    from cache_agent.agent import CacheAgent
    from cache_agent.inventory import InventoryPublisher
    from cache_agent.server import AgentServer

    log = logging.getLogger("cache_agent")
    stop = stop or threading.Event()
    agent = CacheAgent(settings)
    publisher = InventoryPublisher(settings, agent.inventory)
    server: AgentServer | None = None
    try:
        agent.start(on_change=publisher.poke)
        publisher.start()
        if settings.cache_metrics_port:
            from prometheus_client import start_http_server

            # local only, like the invoker's metrics (prometheus_client binds every interface by default)
            start_http_server(settings.cache_metrics_port, addr=settings.runtime_host, registry=agent.metrics.registry)
        server = AgentServer(settings.cache_socket_path, agent)
        server.start()
        log.info("cache agent %s ready on %s: DRAM %d bytes (%s, %s pages, pre-faulted in %.2f s), SSD %d bytes "
                 "at %s, registry %s%s", settings.node_id, settings.cache_socket_path, agent.pool.capacity,
                 agent.pool.path, "2 MiB" if agent.pool.page_bytes > 4096 else "4 KiB", agent.pool.prefault_s,
                 agent.ssd.capacity, agent.ssd.root, agent.registry.url,
                 f", removed {len(agent.reindexed_broken)} broken SSD entries" if agent.reindexed_broken else "")
        if agent.pool.advice:
            log.warning("%s", agent.pool.advice)
        print(f"cache-agent ready socket={settings.cache_socket_path} segment={agent.pool.path} "
              f"page_bytes={agent.pool.page_bytes}", flush=True)
        if ready is not None:
            ready.set()
        stop.wait()
    finally:
        if server is not None:
            server.stop()
        publisher.stop()
        agent.close()


def main(argv: list[str] | None = None) -> None:
    import click

    @click.command("cache-agent")
    @click.option("--node", help="Node id (default: FAAS_LLM_NODE_ID).")
    @click.option("--dram-bytes", type=int, help="DRAM pool size (default: FAAS_LLM_DRAM_CAPACITY_BYTES).")
    @click.option("--ssd-bytes", type=int, help="SSD tier capacity (default: FAAS_LLM_SSD_CAPACITY_BYTES).")
    @click.option("--ssd-dir", type=click.Path(file_okay=False, path_type=Path), help="SSD tier directory.")
    @click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path), help="Unix socket.")
    @click.option("--registry", "registry_url", help="Registry URL (file:///dir or s3://bucket/prefix).")
    def command(**options: Any) -> None:
        """Run the node's cache agent (DRAM and SSD checkpoint tiers) until SIGTERM."""
        overrides = {field: value for field, value in (
            ("node_id", options["node"]), ("dram_capacity_bytes", options["dram_bytes"]),
            ("ssd_capacity_bytes", options["ssd_bytes"]), ("ssd_dir", options["ssd_dir"]),
            ("cache_socket", options["socket_path"]), ("registry_url", options["registry_url"]),
        ) if value is not None}
        settings = Settings.from_env(**overrides)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        run(settings, stop=stop)

    try:
        command.main(args=argv, prog_name="cache-agent", standalone_mode=False)
    except FaasLLMError as exc:
        print(f"cache-agent: error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
