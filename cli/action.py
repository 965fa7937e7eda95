"""``faas-llm action create|update|get|list|delete|invoke`` (``wsk action`` conventions)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli._client import (
    client_options,
    collect_params,
    echo_json,
    echo_table,
    json_option,
    make_client,
    param_options,
)
from faas_llm.client import Client, Invoked
from faas_llm.errors import ActionError
from faas_llm.types import Action


@click.group()
def action() -> None:
    """Actions: an LLM from the model registry served as a function."""


def _limits_scaling(
    timeout: int | None, memory: int | None, concurrency: int | None,
    min_instances: int | None, max_instances: int | None, keep_alive: float | None,
) -> tuple[dict[str, int], dict[str, Any]]:
    limits = {k: v for k, v in {"timeout": timeout, "memory": memory, "concurrency": concurrency}.items()
              if v is not None}
    scaling = {k: v for k, v in {"min_instances": min_instances, "max_instances": max_instances,
                                 "keep_alive": keep_alive}.items() if v is not None}
    return limits, scaling


def _action_options(model_required: bool) -> Any:
    def decorate(func: Any) -> Any:
        options = [
            click.option("--model", "-m", required=model_required, metavar="M",
                         help="Model name in the registry (see `faas-llm model list`)."),
            click.option("--timeout", "-t", type=click.IntRange(100, 300_000), metavar="MS",
                         help="Time limit of one activation in ms (100..300000)."),
            click.option("--memory", type=click.IntRange(128, 1_048_576), metavar="MB", help="Memory limit in MB."),
            click.option("--concurrency", "-c", type=click.IntRange(1, 500), metavar="N",
                         help="Activations one container runs at once."),
            click.option("--min-instances", type=click.IntRange(0, 1024), metavar="N",
                         help="Containers kept warm even when idle."),
            click.option("--max-instances", type=click.IntRange(1, 1024), metavar="N", help="Most containers."),
            click.option("--keep-alive", type=click.FloatRange(0, 86_400), metavar="S",
                         help="Seconds an idle container is kept before scale-in."),
        ]
        for option in reversed(options):
            func = option(func)
        return param_options(func)
    return decorate


@action.command("create")
@click.argument("name")
@_action_options(model_required=True)
@client_options
@json_option
def create(name: str, model: str, params: tuple[tuple[str, str], ...], param_file: Path | None,
           timeout: int | None, memory: int | None, concurrency: int | None, min_instances: int | None,
           max_instances: int | None, keep_alive: float | None, apihost: str | None, auth: str | None,
           as_json: bool) -> None:
    """Create action NAME serving model M (fails if it exists: use `update`)."""
    limits, scaling = _limits_scaling(timeout, memory, concurrency, min_instances, max_instances, keep_alive)
    with make_client(apihost, auth) as wsk:
        created = wsk.create_action(name, model, parameters=collect_params(params, param_file), limits=limits,
                                    scaling=scaling)
    if as_json:
        echo_json(created)
    else:
        click.echo(f"ok: created action {created.name}")


@action.command("update")
@click.argument("name")
@_action_options(model_required=False)
@client_options
@json_option
def update(name: str, model: str | None, params: tuple[tuple[str, str], ...], param_file: Path | None,
           timeout: int | None, memory: int | None, concurrency: int | None, min_instances: int | None,
           max_instances: int | None, keep_alive: float | None, apihost: str | None, auth: str | None,
           as_json: bool) -> None:
    """Update action NAME: change the given fields, keep the rest (creates it if --model is given and it is new)."""
    limits, scaling = _limits_scaling(timeout, memory, concurrency, min_instances, max_instances, keep_alive)
    parameters = collect_params(params, param_file)
    with make_client(apihost, auth) as wsk:
        from faas_llm.errors import NotFoundError

        try:
            updated = wsk.update_action(name, model=model, parameters=parameters, limits=limits, scaling=scaling)
        except NotFoundError:
            if model is None:
                raise
            updated = wsk.create_action(name, model, parameters=parameters, limits=limits, scaling=scaling,
                                        overwrite=True)
    if as_json:
        echo_json(updated)
    else:
        click.echo(f"ok: updated action {updated.name}")


@action.command("get")
@click.argument("name")
@click.option("--summary", "-s", is_flag=True, help="One line per field instead of JSON.")
@client_options
@json_option
def get(name: str, summary: bool, apihost: str | None, auth: str | None, as_json: bool) -> None:
    """Show action NAME (JSON)."""
    with make_client(apihost, auth) as wsk:
        found = wsk.get_action(name)
    if summary and not as_json:
        _summary(found)
        return
    if not as_json:
        click.echo(f"ok: got action {found.name}")
    echo_json(found)


def _summary(a: Action) -> None:
    click.echo(f"action /{a.namespace}/{a.name}  model {a.exec.model}  version {a.version}")
    click.echo(f"  limits   timeout {a.limits.timeout} ms, memory {a.limits.memory} MB, "
               f"concurrency {a.limits.concurrency}")
    click.echo(f"  scaling  instances {a.scaling.min_instances}..{a.scaling.max_instances}, "
               f"keep-alive {a.scaling.keep_alive:g} s")
    params = ", ".join(f"{p.key}={p.value!r}" for p in a.parameters) or "(none)"
    click.echo(f"  params   {params}")


@action.command("list")
@click.option("--limit", "-l", type=click.IntRange(0, 200), default=30, show_default=True)
@click.option("--skip", "-s", type=click.IntRange(0), default=0)
@client_options
@json_option
def list_(limit: int, skip: int, apihost: str | None, auth: str | None, as_json: bool) -> None:
    """List actions (most recently updated first)."""
    with make_client(apihost, auth) as wsk:
        actions = wsk.list_actions(limit=limit, skip=skip)
    if as_json:
        echo_json(actions)
        return
    echo_table(["action", "model", "timeout ms", "memory MB", "concurrency", "instances"],
               [[f"/{a.namespace}/{a.name}", a.exec.model, a.limits.timeout, a.limits.memory, a.limits.concurrency,
                 f"{a.scaling.min_instances}..{a.scaling.max_instances}"] for a in actions], title="actions")


@action.command("delete")
@click.argument("name")
@client_options
@json_option
def delete(name: str, apihost: str | None, auth: str | None, as_json: bool) -> None:
    """Delete action NAME."""
    with make_client(apihost, auth) as wsk:
        deleted = wsk.delete_action(name)
    if as_json:
        echo_json(deleted)
    else:
        click.echo(f"ok: deleted action {deleted.name}")


@action.command("invoke")
@click.argument("name")
@param_options
@click.option("--blocking", "-b", is_flag=True, help="Wait for the activation and print its record.")
@click.option("--result", "-r", is_flag=True, help="Wait and print only the result (implies --blocking).")
@click.option("--stream", is_flag=True,
              help="Print generated text as it arrives (OpenAI streaming endpoint; the `prompt` or `messages` "
                   "parameter is the input, the other parameters are generation options).")
@click.option("--timeout", "timeout_ms", type=click.IntRange(1, 60_000), metavar="MS",
              help="How long a blocking invoke waits (ms).")
@client_options
def invoke(name: str, params: tuple[tuple[str, str], ...], param_file: Path | None, blocking: bool, result: bool,
           stream: bool, timeout_ms: int | None, apihost: str | None, auth: str | None) -> None:
    """Invoke action NAME with parameters (non-blocking unless --blocking/--result/--stream)."""
    values = collect_params(params, param_file)
    if stream:
        if blocking or result:
            raise click.UsageError("--stream cannot be combined with --blocking or --result")
        with make_client(apihost, auth) as wsk:
            _stream(wsk, name, values)
        return
    with make_client(apihost, auth) as wsk:
        done = wsk.invoke(name, values, blocking=blocking, result=result, timeout_ms=timeout_ms)
    _report(name, done, blocking or result, result)


def _stream(wsk: Client, name: str, values: dict[str, Any]) -> None:
    messages = values.pop("messages", None)
    if messages is not None:
        pieces = wsk.stream_chat(name, messages, **values)
    else:
        if "prompt" not in values:
            raise click.UsageError("--stream needs a `prompt` (or `messages`) parameter: -p prompt 'Hello'")
        prompt = values.pop("prompt")
        pieces = wsk.stream_completion(name, str(prompt), **values)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def _report(name: str, done: Invoked, waited: bool, result_only: bool) -> None:
    if not done.done:
        if waited:
            click.echo(f"ok: invoked /_/{name}, but the wait timed out; activation id {done.activation_id}", err=True)
            click.echo(done.activation_id)
            return
        click.echo(f"ok: invoked /_/{name} with id {done.activation_id}")
        return
    if result_only:
        echo_json(done.result)
    else:
        click.echo(f"ok: invoked /_/{name} with id {done.activation_id}", err=True)
        echo_json(done.record)
    if done.success is False:
        status = done.record.response.status if done.record else "application error"
        raise ActionError(f"activation {done.activation_id} of {name} ended with {status}")
