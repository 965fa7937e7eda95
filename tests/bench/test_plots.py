"""The benchmark plots: grouping of the benches' JSON rows, and that a real PNG comes out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import plots

OVERHEAD_ROWS: list[dict[str, Any]] = [
    {"case": "sequential blocking invoke", "code": "baseline"},
    {"case": "open loop @ 100/s", "code": "baseline", "latency_p50_ms": 20, "latency_p99_ms": 60,
     "achieved_per_s": 99.5},
    {"case": "open loop @ 200/s", "code": "baseline", "answered": 0},  # nothing answered: no latency
    {"case": "sequential blocking invoke", "code": "current"},
    {"case": "open loop @ 100/s", "code": "current", "latency_p50_ms": 9, "latency_p99_ms": 20,
     "achieved_per_s": 100.0},
    {"case": "open loop @ 200/s", "code": "current", "latency_p50_ms": 30, "latency_p99_ms": 90,
     "achieved_per_s": 199.0},
    {"case": "sustained rate with p99 <= 100 ms", "code": "current", "inv_per_s": 200.0},
    {"case": "sequential blocking invoke", "code": "baseline"},
    {"case": "open loop @ 100/s", "code": "baseline", "latency_p50_ms": 25, "latency_p99_ms": 70,
     "achieved_per_s": 99.0},
]


def test_rate_curves_one_per_config_and_round() -> None:
    curves = plots.rate_curves(OVERHEAD_ROWS)
    assert [(c.label, c.round_no) for c in curves] == [("baseline", 1), ("current", 1), ("baseline", 2)]
    assert curves[0].rates == [100.0]  # the unanswered 200/s row has no point
    assert curves[1].rates == [100.0, 200.0]
    assert curves[1].p99_ms == [20.0, 90.0]
    assert curves[2].p50_ms == [25.0]


def test_ttft_bars_skip_rows_without_ttft() -> None:
    rows = [{"case": "warm", "ttft_s": 0.5, "total_s": 1.0},
            {"case": "peer: loader cold", "load_s": 1.1},
            {"case": "naive", "ttft_s": 9.0}]
    assert plots.ttft_bars(rows) == [("warm", 0.5, 1.0), ("naive", 9.0, None)]


def test_main_writes_pngs(tmp_path: Path) -> None:
    over = tmp_path / "over.json"
    over.write_text(json.dumps({"machine": {}, "rows": OVERHEAD_ROWS}))
    cold = tmp_path / "cold.json"
    cold.write_text(json.dumps({"machine": {}, "rows": [{"case": "warm", "ttft_s": 0.5, "total_s": 1.0},
                                                       {"case": "cold, DRAM tier", "ttft_s": 0.6}]}))
    for kind, src in (("overhead", over), ("coldstart", cold)):
        out = tmp_path / f"{kind}.png"
        plots.main([kind, str(src), "--out", str(out)])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
