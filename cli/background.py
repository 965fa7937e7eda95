"""Background-work commands: ``faas-llm worker``, ``faas-llm model prefetch|status`` and ``faas-llm node drain``.

They talk to the cluster's Redis (``--redis-url``, else the environment / properties file) and
queue Celery tasks (:mod:`faas_llm.jobs`); ``--wait`` follows a task to its outcome.
"""

from __future__ import annotations

import time
from typing import Any

import click

from cli._client import echo_json, echo_table, exec_service, json_option, load_settings
from faas_llm.errors import FaasLLMError, InternalError, RequestError
from faas_llm.settings import Settings

redis_url_option = click.option("--redis-url", metavar="URL",
                                 help="The cluster's Redis (default: environment, properties file).")


def _settings(redis_url: str | None) -> Settings:
    from faas_llm.properties import ClientConfig

    settings = load_settings()
    url = redis_url or ClientConfig.resolve(settings).redis_url
    return settings.model_copy(update={"redis_url": url})


def _wait(app: Any, task_id: str, timeout_s: float) -> Any:
    from celery.exceptions import TimeoutError as TaskTimeout

    result = app.AsyncResult(task_id)
    try:
        return result.get(timeout=timeout_s, propagate=False)
    except TaskTimeout:
        raise FaasLLMError(f"task {task_id} has not finished after {timeout_s:g} s; it goes on in the background "
                           "(see `faas-llm cluster status`)") from None
    finally:
        if result.failed():
            raise InternalError(f"task {task_id} failed: {result.result!r}")


@click.command("worker", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--node", help="Node id (default: FAAS_LLM_NODE_ID).")
@click.pass_context
def worker(ctx: click.Context, node: str | None) -> None:
    """Run a Celery worker for this node's queue (node.<id>) and the default queue.

    The same as: celery -A worker.celery_app worker -Q node.<id>,celery -P <pool> -c <n>
    (extra arguments go to celery worker).
    """
    exec_service("worker", [*(["--node", node] if node else []), *ctx.args])


@click.command("prefetch")
@click.argument("name")
@click.option("--node", "nodes", multiple=True, required=True, help="Node to fill (repeat for several).")
@click.option("--tier", type=click.Choice(["dram", "ssd"]), default="dram", show_default=True)
@click.option("--version", type=click.IntRange(1), help="Registry version (default: the newest).")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the outcome.")
@redis_url_option
@json_option
def prefetch(name: str, nodes: tuple[str, ...], tier: str, version: int | None, wait_s: float | None,
             redis_url: str | None, as_json: bool) -> None:
    """Fill NODE's DRAM or SSD tier with model NAME ahead of demand (a Celery task on node.<id>)."""
    from faas_llm.jobs import create_sender, send_prefetch

    app = create_sender(_settings(redis_url))
    out: list[dict[str, Any]] = []
    try:
        for node in nodes:
            try:
                task_id = send_prefetch(app, name, node, tier, version)  # type: ignore[arg-type]
            except ValueError as exc:  # a bad model name
                raise RequestError(str(exc)) from None
            row: dict[str, Any] = {"model": name, "node": node, "tier": tier, "task_id": task_id, "state": "queued"}
            if wait_s is not None:
                row.update(_wait(app, task_id, wait_s) or {})
                row["state"] = "done"
            out.append(row)
    finally:
        app.close()
    if as_json:
        echo_json(out)
    else:
        for row in out:
            click.echo(f"prefetch of {row['model']} into {row['tier']} of {row['node']}: {row['state']} "
                       f"(task {row['task_id']})")


@click.command("status")
@click.argument("name", required=False)
@redis_url_option
@json_option
def status(name: str | None, redis_url: str | None, as_json: bool) -> None:
    """Progress and outcome of prefetches per node (of model NAME, or of every model)."""
    import redis

    from faas_llm.keys import Keys
    from faas_llm.model_status import ModelStatusStore, status_rows

    settings = _settings(redis_url)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=3)
    try:
        store = ModelStatusStore(client, Keys(settings.key_prefix))
        names = [name] if name else store.models()
        rows = [{"model": m, **row} for m in names for row in status_rows(store.get(m))]
    except redis.ConnectionError as exc:
        raise FaasLLMError(f"cannot reach the cluster's Redis at {settings.redis_url}: {exc}") from None
    finally:
        client.close()
    if as_json:
        echo_json(rows)
        return
    now = time.time() * 1000
    echo_table(["model", "node", "tier", "state", "attempts", "version", "seconds", "age", "error/note"], [
        [r["model"], r["node"], r["tier"], r["state"], r["attempts"], r["version"] or "",
         "" if r["seconds"] is None else f"{r['seconds']:.2f}",
         f"{(now - (r['finished_ms'] or r['started_ms'] or r['queued_ms'] or now)) / 1000:.0f}s",
         r["error"] or r["note"] or ""] for r in rows], title="model status")


@click.group("node")
def node() -> None:
    """Nodes: drain one for maintenance."""


@node.command("drain")
@click.argument("node_id")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the drain.")
@redis_url_option
@json_option
def drain(node_id: str, wait_s: float | None, redis_url: str | None, as_json: bool) -> None:
    """Move everything off NODE_ID: live-migrate its running generations, then its containers go."""
    from faas_llm.jobs import create_sender, send_drain

    app = create_sender(_settings(redis_url))
    try:
        task_id = send_drain(app, node_id)
        outcome: Any = {"node": node_id, "task_id": task_id, "state": "queued"}
        if wait_s is not None:
            outcome = {**outcome, **(_wait(app, task_id, wait_s) or {}), "state": "done"}
    finally:
        app.close()
    if as_json:
        echo_json(outcome)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in outcome.items()))


@node.command("undrain")
@click.argument("node_id")
@redis_url_option
def undrain(node_id: str, redis_url: str | None) -> None:
    """End the drain of NODE_ID: its invoker takes work again."""
    import redis

    from faas_llm.keys import Keys

    settings = _settings(redis_url)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=3)
    try:
        client.delete(Keys(settings.key_prefix).node_drain(node_id))
    finally:
        client.close()
    click.echo(f"node {node_id} takes work again")
