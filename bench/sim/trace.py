"""Request traces: the Azure LLM inference traces and a synthetic bursty (gamma) variant."""

from __future__ import annotations

import csv
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from faas_llm.errors import ConfigError

TRACE_DIR = Path(__file__).resolve().parents[3] / "shared" / "traces"
TRACE_FILES = {
    "conv": "AzureLLMInferenceTrace_conv.csv",
    "code": "AzureLLMInferenceTrace_code.csv",
}


@dataclass(frozen=True)
class TraceRecord:
    """One request: arrival (seconds from the trace's first), prompt and output tokens."""

    t: float
    ctx_tokens: int
    gen_tokens: int


def _parse_time(text: str) -> datetime:
    # the trace writes 7 fractional digits; datetime takes at most 6
    head, _, frac = text.strip().partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head)


def load_trace(path: Path, limit: int | None = None) -> list[TraceRecord]:
    """Records of an Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), sorted."""
    if not path.is_file():
        raise ConfigError(f"trace file not found: {path}")
    rows: list[tuple[datetime, int, int]] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: missing columns {sorted(missing)}")
        for lineno, row in enumerate(reader, start=2):
            try:
                rows.append((_parse_time(row["TIMESTAMP"]), int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{path}:{lineno}: bad row {row!r}: {exc}") from None
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ConfigError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [TraceRecord((ts - t0).total_seconds(), max(1, ctx), max(1, gen)) for ts, ctx, gen in rows]


def load_named(name: str, limit: int | None = None, trace_dir: Path = TRACE_DIR) -> list[TraceRecord]:
    try:
        filename = TRACE_FILES[name]
    except KeyError:
        raise ConfigError(f"unknown trace {name!r}: choose one of {', '.join(sorted(TRACE_FILES))}") from None
    return load_trace(trace_dir / filename, limit)


def bursty_variant(records: Sequence[TraceRecord], cv: float, seed: int) -> list[TraceRecord]:
    """Same requests (token lengths, count, mean rate), arrivals re-drawn with gamma inter-arrivals.

    A gamma distribution with shape ``1 / cv**2`` has coefficient of variation ``cv``
    (1 is Poisson; larger is burstier).
    """
    if cv <= 0:
        raise ConfigError(f"cv must be > 0, got {cv}")
    if len(records) < 2:
        return list(records)
    rng = random.Random(seed)
    span = records[-1].t - records[0].t
    mean_gap = span / (len(records) - 1)
    shape = 1.0 / (cv * cv)
    scale = mean_gap / shape
    t = 0.0
    out = []
    for i, rec in enumerate(records):
        if i:
            t += rng.gammavariate(shape, scale)
        out.append(TraceRecord(t, rec.ctx_tokens, rec.gen_tokens))
    return out


def interarrival_cv(records: Sequence[TraceRecord]) -> float:
    """Coefficient of variation of the inter-arrival gaps (burstiness)."""
    gaps = [b.t - a.t for a, b in itertools.pairwise(records)]
    if not gaps:
        return 0.0
    mean = sum(gaps) / len(gaps)
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    return (var**0.5) / mean if mean > 0 else 0.0
