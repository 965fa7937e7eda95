"""The ``faas-llm`` command line (conventions of OpenWhisk's ``wsk`` where they fit).

Exit codes: 0 ok, 1 an error reported by the server or the system, 2 a usage error.
Each command group lives in its own module and is registered on :data:`cli` here.
"""

from __future__ import annotations

import sys

import click

from cli._client import exec_service
from cli.action import action
from cli.activation import activation
from cli.admin import admin, gateway_cmd
from cli.background import node, worker
from cli.cluster import cluster
from cli.model import model
from cli.property import property_group
from cli.up import down, up
from faas_llm import __version__
from faas_llm.errors import FaasLLMError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="faas-llm")
def cli() -> None:
    """faas-llm: serverless LLM inference (OpenWhisk-style actions, ServerlessLLM-style loading)."""


@cli.command("cache-agent", add_help_option=False,
             context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def cache_agent_cmd(ctx: click.Context) -> None:
    """Run this node's cache agent (the same options as `cache-agent`; --help for them)."""
    exec_service("cache_agent", list(ctx.args))


cli.add_command(model)
cli.add_command(admin)
cli.add_command(gateway_cmd)
cli.add_command(action)
cli.add_command(activation)
cli.add_command(property_group)
cli.add_command(cluster)
cli.add_command(up)
cli.add_command(down)
cli.add_command(worker)
cli.add_command(node)


@cli.command("invoker")
def invoker_cmd() -> None:
    """Run this node's invoker (settings from FAAS_LLM_* variables; SIGTERM stops it gracefully)."""
    exec_service("invoker", [])


@cli.command("runtime")
def runtime_cmd() -> None:
    """Run an action runtime (OpenWhisk /init,/run; Knative $PORT) on its own HTTP server; FAAS_LLM_* settings."""
    exec_service("action_runtime", [])


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning faas-llm errors into a message and exit code 1."""
    try:
        cli.main(args=argv, prog_name="faas-llm", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FaasLLMError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    sys.exit(0)
