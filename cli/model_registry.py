"""``faas-llm model push | list | delete``: the model registry (registered on the ``model`` group)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import click

from faas_llm.settings import get_settings


@click.command("push")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Registry name: 'name' or 'org/name'.")
@click.option("--registry", "registry_url", help="Registry URL (default: FAAS_LLM_REGISTRY_URL).")
def push(src: Path, name: str, registry_url: str | None) -> None:
    """Convert SRC (a Hugging Face directory, or a checkpoint) and push it as a new version of NAME."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from faas_llm.registry import open_registry, validate_name
    from faas_llm.registry.push import push_model

    validate_name(name)
    settings = get_settings()
    registry = open_registry(settings, registry_url)
    started = time.perf_counter()
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        converting = bar.add_task(f"converting {src.name}", total=None, visible=False)
        uploading = bar.add_task(f"uploading to {registry.url}", total=None)

        def on_convert(done: int, total: int) -> None:
            bar.update(converting, completed=done, total=total, visible=True)

        def on_upload(nbytes: int) -> None:
            bar.advance(uploading, nbytes)

        version = push_model(registry, src, name, work_dir=settings.data_dir / "tmp",
                             convert_progress=on_convert, upload_progress=on_upload)
    click.echo(f"pushed {version.name} version {version.version} ({version.nbytes / 1e6:.1f} MB) "
               f"to {registry.url} in {time.perf_counter() - started:.1f} s")


@click.command("list")
@click.option("--registry", "registry_url", help="Registry URL (default: FAAS_LLM_REGISTRY_URL).")
@click.option("--all-versions", is_flag=True, help="Show every version, not only the latest.")
def list_models(registry_url: str | None, all_versions: bool) -> None:
    """List the models in the registry."""
    from rich.console import Console
    from rich.table import Table

    from faas_llm.registry import open_registry

    registry = open_registry(get_settings(), registry_url)
    rows = [v for n in registry.names() for v in registry.versions(n)] if all_versions else registry.list_models()
    table = Table("name", "version", "size", "files", "pushed", title=registry.url)
    for v in rows:
        pushed = datetime.fromtimestamp(v.created_ms / 1000).isoformat(sep=" ", timespec="seconds")
        table.add_row(v.name, str(v.version), f"{v.nbytes / 1e6:.1f} MB", str(len(v.files)), pushed)
    Console().print(table)


@click.command("delete")
@click.argument("name")
@click.option("--version", type=click.IntRange(1), help="Delete one version only (default: all).")
@click.option("--registry", "registry_url", help="Registry URL (default: FAAS_LLM_REGISTRY_URL).")
def delete(name: str, version: int | None, registry_url: str | None) -> None:
    """Delete model NAME (every version, or --version) from the registry."""
    from faas_llm.registry import open_registry

    deleted = open_registry(get_settings(), registry_url).delete(name, version)
    click.echo(f"deleted {name} version(s) {', '.join(map(str, deleted))}")
