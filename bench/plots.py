"""PNG plots of the end-to-end benchmarks' JSON output (issue 11): warm-path latency against offered rate
(``bench/overhead_bench.py --json``) and time to first token by where the checkpoint is
(``bench/coldstart_bench.py --json``). The scheduler simulator draws its own CDF (``bench/sim/report.py``).

    python -m bench.plots overhead bench/out/overhead_bench.json --out bench/overhead_latency.png
    python -m bench.plots coldstart bench/out/coldstart_bench.json --out bench/coldstart_ttft.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPEN_LOOP_PREFIX = "open loop @ "
ROUND_START_CASE = "sequential blocking invoke"


@dataclass
class RateCurve:
    """One configuration's open-loop results in one round: offered rate -> latency percentiles."""

    label: str
    round_no: int
    rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    achieved: list[float] = field(default_factory=list)


def rate_curves(rows: Sequence[Mapping[str, Any]]) -> list[RateCurve]:
    """Group overhead_bench rows into one curve per (configuration, round), in the order they ran.

    A configuration's round starts at its ``sequential blocking invoke`` row (each round runs the
    sequential cases first, then the open-loop rates); rows of a rate nobody answered have no latency
    and are left out of the curve."""
    curves: list[RateCurve] = []
    current: dict[str, RateCurve] = {}
    rounds: dict[str, int] = {}
    for row in rows:
        label = str(row.get("code", "current"))
        case = str(row.get("case", ""))
        if case == ROUND_START_CASE or label not in current:
            rounds[label] = rounds.get(label, 0) + 1
            current[label] = RateCurve(label, rounds[label])
            curves.append(current[label])
        if not case.startswith(OPEN_LOOP_PREFIX) or "latency_p99_ms" not in row:
            continue
        curve = current[label]
        curve.rates.append(float(case[len(OPEN_LOOP_PREFIX):].rstrip("/s")))
        curve.p50_ms.append(float(row["latency_p50_ms"]))
        curve.p99_ms.append(float(row["latency_p99_ms"]))
        curve.achieved.append(float(row.get("achieved_per_s", 0.0)))
    return [c for c in curves if c.rates]


def ttft_bars(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float | None]]:
    """(case, TTFT s, total s) of every coldstart_bench summary row that has a time to first token."""
    bars = []
    for row in rows:
        if row.get("ttft_s") is None:
            continue
        total = row.get("total_s")
        bars.append((str(row["case"]), float(row["ttft_s"]), float(total) if total is not None else None))
    return bars


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_overhead(rows: Sequence[Mapping[str, Any]], out: Path, limit_ms: float = 100.0) -> None:
    curves = rate_curves(rows)
    if not curves:
        raise SystemExit("no open-loop rows with latencies in the input")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    colours: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for curve in curves:
        colour = colours.setdefault(curve.label, palette[len(colours) % len(palette)])
        name = f"{curve.label} r{curve.round_no}"
        axes[0].plot(curve.rates, curve.p99_ms, marker="o", color=colour, alpha=0.85, label=name)
        axes[0].plot(curve.rates, curve.p50_ms, marker=".", linestyle=":", color=colour, alpha=0.85)
        axes[1].plot(curve.rates, curve.achieved, marker="o", color=colour, alpha=0.85, label=name)
    axes[0].axhline(limit_ms, color="grey", linestyle="--", linewidth=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("offered invocations/s")
    axes[0].set_ylabel("latency ms (p99 solid, p50 dotted)")
    axes[0].set_title(f"blocking invoke latency (p99 bound {limit_ms:g} ms)")
    top = max(max(c.rates) for c in curves)
    axes[1].plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
    axes[1].set_xlabel("offered invocations/s")
    axes[1].set_ylabel("achieved invocations/s")
    axes[1].set_title("throughput")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Warm path, tiny model, max_tokens=1 (bench/overhead_bench.py)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_coldstart(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    bars = ttft_bars(rows)
    if not bars:
        raise SystemExit("no rows with ttft_s in the input")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.6))
    names = [b[0] for b in bars]
    ys = list(range(len(bars)))
    ax.barh(ys, [b[1] for b in bars], color="tab:blue", label="time to first token")
    totals = [(y, b[2]) for y, b in zip(ys, bars, strict=True) if b[2] is not None]
    ax.scatter([t for _, t in totals], [y for y, _ in totals], marker="|", s=200, color="black",
               label="full result")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds from the HTTP invoke (log scale)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Cold start by where the checkpoint is (bench/coldstart_bench.py)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["overhead", "coldstart"])
    parser.add_argument("json_path", type=Path, help="the bench's --json output")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    rows = json.loads(args.json_path.read_text())["rows"]
    if args.kind == "overhead":
        plot_overhead(rows, args.out)
    else:
        plot_coldstart(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
