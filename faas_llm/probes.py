"""Readiness probes of faas-llm's services, shared by the supervisor (``faas-llm up``) and
container health checks (``python -m faas_llm.probes gateway|invoker|cache-agent|runtime|redis``).

Each probe is a function of :class:`~faas_llm.settings.Settings` that answers quickly and never raises:
``True`` when the service is ready.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

import redis
import requests

from faas_llm.keys import Keys
from faas_llm.settings import Settings, get_settings

Probe = Callable[[Settings], bool]


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((connect_host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ready(settings: Settings) -> bool:
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def gateway_ready(settings: Settings) -> bool:
    """The gateway answers ``GET /health`` with 200 (it is up and reaches Redis)."""
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "") else settings.gateway_host
    try:
        return requests.get(f"http://{host}:{settings.gateway_port}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def runtime_ready(settings: Settings) -> bool:
    return tcp_open(settings.runtime_host, settings.runtime_port)


def cache_agent_ready(settings: Settings) -> bool:
    return settings.cache_socket_path.is_socket()


def invoker_ready(settings: Settings) -> bool:
    """The invoker has published a live node report (it expires without heartbeats)."""
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.exists(Keys(settings.key_prefix).node(settings.node_id)))
        finally:
            client.close()
    except redis.RedisError:
        return False


def always(settings: Settings) -> bool:
    """For services with nothing to probe: alive is ready."""
    return True


PROBES: dict[str, Probe] = {
    "redis": redis_ready,
    "gateway": gateway_ready,
    "runtime": runtime_ready,
    "cache-agent": cache_agent_ready,
    "invoker": invoker_ready,
}


def main(argv: list[str] | None = None) -> int:
    """``python -m faas_llm.probes NAME``: exit 0 when ready, 1 when not (a container HEALTHCHECK)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in PROBES:
        print(f"usage: python -m faas_llm.probes {{{','.join(PROBES)}}}", file=sys.stderr)
        return 2
    ready = PROBES[args[0]](get_settings())
    if not ready:
        print(f"{args[0]} is not ready", file=sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
