"""Statistics of a run (startup latency percentiles, tier shares) and the CDF plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.sim.engine import Served, SimResult
from faas_llm.types import LoadTier

TIERS = (LoadTier.WARM, LoadTier.DRAM, LoadTier.SSD, LoadTier.REGISTRY)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100) of already sorted values."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measured(result: SimResult, first_id: int) -> list[Served]:
    """The served requests that count (the first ``first_id`` requests warm the cluster up)."""
    return [s for s in result.served if s.request >= first_id]


def summarise(result: SimResult, first_id: int) -> dict[str, Any]:
    served = measured(result, first_id)
    latencies = sorted(s.latency_s for s in served)
    n = len(served)
    row: dict[str, Any] = {
        "requests": n,
        "mean_s": sum(latencies) / n if n else math.nan,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
    }
    for tier in TIERS:
        row[f"{tier.value}_pct"] = 100.0 * sum(1 for s in served if s.tier is tier) / n if n else math.nan
    row["unserved"] = result.unserved
    row["migrations"] = result.migrations
    row["waits"] = result.waits
    return row


def plot_cdfs(path: Path, panels: Mapping[str, Mapping[str, Sequence[float]]], title: str) -> None:
    """One panel per key of ``panels`` (e.g. load level), one CDF line per policy, log-x startup latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    floor = 1e-2  # warm starts (0 s) drawn at 10 ms on the log axis
    for ax, (panel, lines) in zip(axes[0], panels.items(), strict=True):
        for label, values in lines.items():
            xs = sorted(max(floor, v) for v in values)
            if not xs:
                continue
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            style = "--" if label in ("clairvoyant", "serverlessllm") else "-"
            ax.step(xs, ys, where="post", label=label, linestyle=style, linewidth=1.4)
        ax.set_xscale("log")
        ax.set_xlabel("startup latency (s), warm drawn at 0.01 s")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("share of requests")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
