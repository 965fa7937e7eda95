"""``faas-llm property set|get|unset``: the CLI's properties file (like ``wsk property``)."""

from __future__ import annotations

import click

from cli._client import echo_json, json_option, load_settings
from faas_llm.properties import ClientConfig, read_properties, write_properties


@click.group("property")
def property_group() -> None:
    """The API host and key the CLI uses (a ~/.wskprops-like file; FAAS_LLM_APIHOST/FAAS_LLM_AUTH override)."""


@property_group.command("set")
@click.option("--apihost", metavar="URL", help="Gateway URL, e.g. http://127.0.0.1:3233.")
@click.option("--auth", "-u", metavar="KEY", help="API key uuid:key.")
@click.option("--namespace", metavar="NS", help="Namespace (default: _, the key's own).")
@click.option("--redis-url", metavar="URL", help="Redis of the cluster (for `cluster status`).")
def set_(apihost: str | None, auth: str | None, namespace: str | None, redis_url: str | None) -> None:
    """Set properties (the others are kept)."""
    updates = {"APIHOST": apihost, "AUTH": auth, "NAMESPACE": namespace, "REDIS_URL": redis_url}
    chosen = {k: v for k, v in updates.items() if v is not None}
    if not chosen:
        raise click.UsageError("give at least one of --apihost, --auth, --namespace, --redis-url")
    path = load_settings().properties_file
    write_properties(path, dict(chosen))
    for key in chosen:
        click.echo(f"ok: {key.lower()} set in {path}")


@property_group.command("unset")
@click.argument("names", nargs=-1, required=True, type=click.Choice(["apihost", "auth", "namespace", "redis-url"]))
def unset(names: tuple[str, ...]) -> None:
    """Remove properties."""
    path = load_settings().properties_file
    write_properties(path, {n.upper().replace("-", "_"): None for n in names})
    click.echo(f"ok: unset {', '.join(names)} in {path}")


@property_group.command("get")
@click.option("--apihost", "show", flag_value="apihost", help="Only the API host.")
@click.option("--auth", "show", flag_value="auth", help="Only the key.")
@click.option("--namespace", "show", flag_value="namespace", help="Only the namespace.")
@json_option
def get(show: str | None, as_json: bool) -> None:
    """Show the values in effect (environment over the file over defaults)."""
    settings = load_settings()
    config = ClientConfig.resolve(settings)
    values = {
        "apihost": config.apihost, "auth": config.auth, "namespace": config.namespace,
        "redis_url": config.redis_url, "properties_file": str(settings.properties_file),
    }
    if show:
        click.echo(values[show])
        return
    if as_json:
        echo_json({**values, "file": read_properties(settings.properties_file)})
        return
    for name, value in values.items():
        click.echo(f"{name:<16}{value or '(unset)'}")
