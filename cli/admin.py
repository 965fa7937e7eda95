"""``faas-llm admin ...`` (like OpenWhisk's ``wskadmin``) and ``faas-llm gateway``.

Admin commands talk to Redis directly (``FAAS_LLM_REDIS_URL``): they are for the
operator of a deployment, not for API users.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
import redis

from faas_llm.actions_store import ActionStore
from faas_llm.auth import AuthStore
from faas_llm.keys import Keys
from faas_llm.limits import Limiter, NamespaceLimits
from faas_llm.settings import Settings, get_settings


@contextmanager
def _redis(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@click.group()
def admin() -> None:
    """Administer namespaces, keys and limits (talks to Redis directly, like wskadmin)."""


@admin.group()
def namespace() -> None:
    """Namespaces (each has its own actions, activations, keys and limits)."""


@namespace.command("create")
@click.argument("name")
@click.option("--no-key", is_flag=True, help="Do not create a first key.")
def namespace_create(name: str, no_key: bool) -> None:
    """Create namespace NAME and print its first key (uuid:key)."""
    settings = get_settings()
    with _redis(settings) as client:
        store = AuthStore(client, Keys(settings.key_prefix))
        store.create_namespace(name)
        if not no_key:
            click.echo(str(store.create_key(name)))


@namespace.command("list")
def namespace_list() -> None:
    """List namespaces with how many keys and actions each has."""
    settings = get_settings()
    with _redis(settings) as client:
        keys = Keys(settings.key_prefix)
        store, actions = AuthStore(client, keys), ActionStore(client, keys)
        for name in store.list_namespaces():
            click.echo(f"{name}\tkeys={len(store.list_keys(name))}\tactions={actions.count(name)}")


@namespace.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def namespace_delete(name: str, yes: bool) -> None:
    """Delete namespace NAME: its keys, limits and actions (activation records expire on their own)."""
    if not yes:
        click.confirm(f"Delete namespace {name!r}, its keys and its actions?", abort=True)
    settings = get_settings()
    with _redis(settings) as client:
        keys = Keys(settings.key_prefix)
        revoked = AuthStore(client, keys).delete_namespace(name)
        removed = ActionStore(client, keys).delete_all(name)
    click.echo(f"deleted namespace {name} ({revoked} keys, {removed} actions)")


@admin.group()
def key() -> None:
    """API keys (uuid:key; only a hash of the key is stored)."""


@key.command("create")
@click.argument("namespace_name", metavar="NAMESPACE")
def key_create(namespace_name: str) -> None:
    """Create a key for NAMESPACE and print it (uuid:key); it cannot be shown again."""
    settings = get_settings()
    with _redis(settings) as client:
        click.echo(str(AuthStore(client, Keys(settings.key_prefix)).create_key(namespace_name)))


@key.command("list")
@click.argument("namespace_name", metavar="NAMESPACE")
def key_list(namespace_name: str) -> None:
    """List the uuids of NAMESPACE's keys."""
    settings = get_settings()
    with _redis(settings) as client:
        for uuid in AuthStore(client, Keys(settings.key_prefix)).list_keys(namespace_name):
            click.echo(uuid)


@key.command("delete")
@click.argument("uuid")
def key_delete(uuid: str) -> None:
    """Revoke the key with UUID."""
    settings = get_settings()
    with _redis(settings) as client:
        ns = AuthStore(client, Keys(settings.key_prefix)).delete_key(uuid)
    click.echo(f"revoked {uuid} of {ns}")


@admin.group()
def limits() -> None:
    """Per-namespace limits (OpenWhisk's invocationsPerMinute, concurrentInvocations)."""


@limits.command("set")
@click.argument("namespace_name", metavar="NAMESPACE")
@click.option("--invocations-per-minute", type=click.IntRange(min=1))
@click.option("--concurrent-invocations", type=click.IntRange(min=1))
def limits_set(namespace_name: str, invocations_per_minute: int | None, concurrent_invocations: int | None) -> None:
    """Override NAMESPACE's limits (options left out keep their values)."""
    settings = get_settings()
    with _redis(settings) as client:
        store = AuthStore(client, Keys(settings.key_prefix))
        if not store.namespace_exists(namespace_name):
            raise click.BadParameter(f"namespace {namespace_name!r} does not exist", param_hint="NAMESPACE")
        now = _limiter(client, settings).set_limits(namespace_name, invocations_per_minute=invocations_per_minute,
                                                    concurrent_invocations=concurrent_invocations)
    click.echo(f"{namespace_name}: invocationsPerMinute={now.invocations_per_minute} "
               f"concurrentInvocations={now.concurrent_invocations}")


@limits.command("get")
@click.argument("namespace_name", metavar="NAMESPACE")
def limits_get(namespace_name: str) -> None:
    """Show NAMESPACE's effective limits."""
    settings = get_settings()
    with _redis(settings) as client:
        now = _limiter(client, settings).limits_for(namespace_name)
    click.echo(f"{namespace_name}: invocationsPerMinute={now.invocations_per_minute} "
               f"concurrentInvocations={now.concurrent_invocations}")


def _limiter(client: redis.Redis, settings: Settings) -> Limiter:
    return Limiter(client, Keys(settings.key_prefix),
                   NamespaceLimits(settings.invocations_per_minute, settings.concurrent_invocations))


@click.command("gateway")
def gateway_cmd() -> None:
    """Run the gateway under gunicorn on FAAS_LLM_GATEWAY_HOST:FAAS_LLM_GATEWAY_PORT (like faas-llm-gateway)."""
    from cli._client import exec_service

    exec_service("gateway", [])
