"""Shared pieces of the client-side commands (action, activation, property, cluster):
options that pick the gateway and key, ``-p KEY VALUE`` / ``-P FILE`` parameters, and output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from faas_llm.client import Client
from faas_llm.errors import RequestError
from faas_llm.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (a bad variable is a clear error, exit 1), with CLI overrides."""
    return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})


def exec_service(package: str, argv: list[str]) -> None:
    """Become the process of ``package`` (``python -m PACKAGE ARGV``): the CLI starts services, it does not
    import them (each process is its own package)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", package, *argv])


def client_options(func: F) -> F:
    """``--apihost`` and ``-u/--auth`` (like wsk), each overriding the environment and the properties file."""
    func = click.option("--auth", "-u", "auth", metavar="KEY",
                        help="API key uuid:key (default: properties file).")(func)
    func = click.option("--apihost", metavar="URL", help="Gateway URL (default: properties file).")(func)
    return func


def make_client(apihost: str | None, auth: str | None, timeout: float = 75.0) -> Client:
    return Client.from_settings(load_settings(apihost=apihost, auth=auth), timeout=timeout)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")(func)


def parse_value(text: str) -> Any:
    """A parameter value as wsk reads it: JSON if it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def collect_params(pairs: Sequence[tuple[str, str]], param_file: Path | None) -> dict[str, Any]:
    """``-P FILE`` (a JSON object) first, then each ``-p KEY VALUE`` over it."""
    params: dict[str, Any] = {}
    if param_file is not None:
        try:
            loaded = json.loads(param_file.read_text())
        except (OSError, ValueError) as exc:
            raise RequestError(f"cannot read parameters from {param_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise RequestError(f"{param_file} must hold a JSON object of parameters")
        params.update(loaded)
    for key, value in pairs:
        params[key] = parse_value(value)
    return params


def param_options(func: F) -> F:
    func = click.option("--param-file", "-P", "param_file", type=click.Path(exists=True, dir_okay=False,
                        path_type=Path), help="A JSON file of parameters.")(func)
    func = click.option("--param", "-p", "params", type=(str, str), multiple=True, metavar="KEY VALUE",
                        help="A parameter (VALUE as JSON if it parses, else a string); repeatable.")(func)
    return func


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A plain aligned table (no colour or box, so it reads the same in a pipe)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        click.echo(title)
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))
