"""``faas-llm model ...``: build, inspect and try models."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
def model() -> None:
    """Models: build demo models, convert, push to the registry."""


def _add_registry_commands() -> None:
    from cli.model_registry import delete, list_models, push

    for command in (push, list_models, delete):
        model.add_command(command)


_add_registry_commands()


def _add_background_commands() -> None:
    from cli.background import prefetch, status

    for command in (prefetch, status):
        model.add_command(command)


_add_background_commands()


@model.command("make-demo")
@click.option("--size", type=click.Choice(["tiny", "bench"]), default="tiny", show_default=True,
              help="tiny: a few MB for tests; bench: ~1.3 B parameters, fp16, ~2.6 GB.")
@click.option("--arch", type=click.Choice(["llama", "gpt2", "opt"]), default="llama", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def make_demo(size: str, arch: str, seed: int, out_dir: Path) -> None:
    """Build a demo model (random weights, local tokenizer) as a Hugging Face directory in OUT_DIR."""
    from faas_llm.demo_models import make_demo_model

    started = time.perf_counter()
    path = make_demo_model(out_dir, size=size, arch=arch, seed=seed)  # type: ignore[arg-type]
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    click.echo(f"wrote {size} {arch} model to {path} ({total / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")


@model.command("convert")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists (atomically).")
@click.option("--partition-mib", type=click.IntRange(1), default=1024, show_default=True,
              help="Target size of one partition file.")
def convert_cmd(src: Path, dst: Path, overwrite: bool, partition_mib: int) -> None:
    """Convert a Hugging Face model directory SRC into a loading-optimised checkpoint DST."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from faas_llm.checkpoint import convert

    started = time.perf_counter()
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(f"converting {src.name}", total=None)
        index = convert(src, dst, lambda done, total: bar.update(task, completed=done, total=total),
                        overwrite=overwrite, partition_bytes=partition_mib * 1024 * 1024)
    click.echo(f"wrote {dst}: {len(index.tensors)} tensors ({len(index.aliases)} aliases), "
               f"{len(index.partitions)} partition(s), {index.total_bytes / 1e6:.1f} MB "
               f"in {time.perf_counter() - started:.1f} s")


@model.command("generate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--prompt", "-p", default="The serverless platform", show_default=True)
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=16, show_default=True)
def generate(model_dir: Path, prompt: str, max_tokens: int) -> None:
    """Generate greedily from a local Hugging Face model directory, offline (a smoke test)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    loaded = time.perf_counter()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = lm.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    done = time.perf_counter()
    click.echo(f"prompt: {prompt!r}")
    click.echo(f"output: {text!r}")
    click.echo(f"load {loaded - started:.2f} s, generate {done - loaded:.2f} s "
               f"({out.shape[1] - inputs['input_ids'].shape[1]} tokens)")
