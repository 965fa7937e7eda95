"""Shared helpers of the bench/ scripts: machine description, table printing, --json output.

Every bench script prints its table and, with ``--json PATH``, writes
``{"machine": {...}, "rows": [{"case": ..., <figures>}]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 1024**2, 1)
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info["load_avg"] = os.getloadavg()
    return info


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", type=Path, default=None, help="write {machine, rows} to this path")
    return parser


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def print_table(rows: Sequence[Row], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """Print rows as an aligned plain-text (markdown-compatible) table; returns the text."""
    if not rows:
        text = f"{title or ''}\n(no rows)\n"
        print(text)
        return text
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = []
    if title:
        lines.append(title)
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    for row in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    sys.stdout.flush()
    return text


def write_json(path: Path | None, rows: Sequence[Row], **extra: Any) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_info(), "rows": list(rows), **extra}, indent=2) + "\n")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quiet_gc() -> None:
    """Before a load generator measures: collect once and freeze what is alive (``gc.freeze``). A bench
    process that built a model has imported torch and transformers (~380,000 objects), and a full
    collection of them took ~220 ms: a stall of every sender that the latencies would charge to the
    system under test (measured: one such stall per open-loop round put its p99 at 140-260 ms)."""
    import gc

    gc.collect()
    gc.freeze()


def drop_page_cache() -> bool:
    """Drop the page cache (root only). Returns False where it could not."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out
