"""``faas-llm cluster status``: nodes, what each caches in DRAM and on SSD, warm containers per
action, and queue depths, read from the cluster's Redis (the records invokers and cache agents publish)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click
import redis
from pydantic import BaseModel, Field

from cli._client import echo_json, echo_table, json_option, load_settings
from faas_llm.errors import FaasLLMError
from faas_llm.keys import Keys
from faas_llm.properties import ClientConfig
from faas_llm.types import CacheInventory, ContainerState, NodeReport


class QueueDepth(BaseModel):
    queue: str
    length: int = 0
    #: delivered to an invoker, not yet acknowledged
    pending: int = 0
    #: not yet delivered to any invoker (None when Redis cannot tell)
    waiting: int | None = None


class ClusterStatus(BaseModel):
    nodes: list[NodeReport] = Field(default_factory=list)
    caches: list[CacheInventory] = Field(default_factory=list)
    #: node ids that are indexed but whose report expired (no heartbeat)
    stale_nodes: list[str] = Field(default_factory=list)
    queues: list[QueueDepth] = Field(default_factory=list)


class RedisUnavailableError(FaasLLMError):
    http_status = 503
    recoverable = True
    default_message = "The cluster's Redis cannot be reached."


def gather_status(client: Any, keys: Keys) -> ClusterStatus:
    """Read every node report, cache inventory and queue depth (replies decoded as str)."""
    status = ClusterStatus()
    for node_id in client.zrange(keys.nodes_index(), 0, -1):
        report = client.get(keys.node(node_id))
        if report is None:
            status.stale_nodes.append(node_id)
        else:
            status.nodes.append(NodeReport.model_validate_json(report))
        cache = client.get(keys.node_cache(node_id))
        if cache is not None:
            status.caches.append(CacheInventory.model_validate_json(cache))
    for queue in sorted(client.smembers(keys.queues_index())):
        depth = QueueDepth(queue=queue, length=int(client.xlen(queue)))
        try:
            groups = client.xinfo_groups(queue)
        except redis.ResponseError:  # the stream is gone
            groups = []
        for group in groups:
            if group.get("name") == keys.consumer_group():
                depth.pending = int(group.get("pending") or 0)
                lag = group.get("lag")
                depth.waiting = None if lag is None else int(lag)
        status.queues.append(depth)
    return status


def warm_by_action(nodes: list[NodeReport]) -> dict[str, Counter[str]]:
    """action -> {container state: count} over every node (prewarmed containers under ``(prewarmed)``)."""
    out: dict[str, Counter[str]] = {}
    for node in nodes:
        for c in node.containers:
            name = f"/{c.namespace}/{c.action}" if c.action else "(prewarmed)"
            out.setdefault(name, Counter())[c.state.value] += 1
    return out


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def _queue_label(queue: str, keys: Keys) -> str:
    prefix = keys.action_queue("", "").rstrip(":")
    return queue.removeprefix(prefix + ":").replace(":", "/", 1) if queue.startswith(prefix) else queue


def render(status: ClusterStatus, keys: Keys) -> None:
    if not status.nodes and not status.caches:
        click.echo("no live nodes (is an invoker running?)")
    if status.nodes:
        echo_table(
            ["node", "containers", "busy", "idle", "prewarmed", "max", "free memory MB", "draining"],
            [[n.node, len(n.containers), sum(c.state is ContainerState.BUSY for c in n.containers),
              sum(c.state is ContainerState.IDLE for c in n.containers),
              sum(c.state is ContainerState.PREWARMED for c in n.containers), n.max_containers, n.free_memory_mb,
              "yes" if n.draining else ""] for n in status.nodes],
            title="nodes",
        )
    if status.stale_nodes:
        click.echo(f"nodes without a recent heartbeat: {', '.join(status.stale_nodes)}")
    if status.caches:
        click.echo()
        echo_table(
            ["node", "DRAM models", "DRAM used/cap GB", "SSD models", "SSD used/cap GB", "pending loads"],
            [[c.node, ", ".join(c.dram.models) or "-",
              f"{_gb(c.dram.capacity_bytes - c.dram.free_bytes)}/{_gb(c.dram.capacity_bytes)}",
              ", ".join(c.ssd.models) or "-",
              f"{_gb(c.ssd.capacity_bytes - c.ssd.free_bytes)}/{_gb(c.ssd.capacity_bytes)}",
              ", ".join(c.pending_loads) or "-"] for c in status.caches],
            title="caches",
        )
    warm = warm_by_action(status.nodes)
    if warm:
        click.echo()
        states = [s.value for s in ContainerState]
        rows = [[a, *(counts.get(s, 0) for s in states)] for a, counts in sorted(warm.items())]
        echo_table(["action", *states], rows, title="containers per action")
    if status.queues:
        click.echo()
        echo_table(["queue", "length", "in flight", "waiting"],
                   [[_queue_label(q.queue, keys), q.length, q.pending, "" if q.waiting is None else q.waiting]
                    for q in status.queues], title="queues")


@click.group()
def cluster() -> None:
    """The cluster: nodes, caches, containers, queues."""


@cluster.command("status")
@click.option("--redis-url", metavar="URL", help="The cluster's Redis (default: environment, properties file).")
@json_option
def status_(redis_url: str | None, as_json: bool) -> None:
    """Show nodes, DRAM/SSD cache contents, warm containers per action and queue depths."""
    settings = load_settings()
    url = redis_url or ClientConfig.resolve(settings).redis_url
    keys = Keys(settings.key_prefix)
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
    try:
        status = gather_status(client, keys)
    except redis.ConnectionError as exc:
        raise RedisUnavailableError(f"cannot reach the cluster's Redis at {url}: {exc}") from None
    finally:
        client.close()
    if as_json:
        echo_json(status)
    else:
        render(status, keys)
